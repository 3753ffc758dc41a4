#!/usr/bin/env bash
# Set up msrs in the current Python environment: `bash install.sh` (the package) or `bash install.sh test`
# (the package and the test extras). Safe to run again.
#
# torch: an installed torch (>= 2.4) is kept as it is, so no second multi-GB build is pulled. With none installed,
# torch 2.13.0 is installed first: the release msrs is tested with (a CPU build where pip finds one locally, as on
# the project's machines; PyPI's default build elsewhere). The package itself builds without torch (no build
# isolation trap): the C++ ops compile on first use against the torch that is installed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "install.sh: no torch found; installing torch==2.13.0"
  "$PY" -m pip install --quiet "torch==2.13.0" || "$PY" -m pip install --quiet "torch>=2.4"
fi

extras=""
case "${1:-}" in
  "") ;;
  test) extras="[test]" ;;
  models) extras="[models]" ;;
  *) echo "install.sh: expected no argument, 'test' or 'models', got '$1'" >&2; exit 2 ;;
esac
# Both extras bring timm, which needs torchvision; a torchvision release pins one torch release, so ask for the one
# that matches the installed torch (2.N -> 0.(N+15)), or pip would replace torch with a multi-GB build.
pins=()
if [ -n "$extras" ]; then
  vision=$("$PY" -c "import torch; major, minor = (int(v) for v in torch.__version__.split('.')[:2]); \
print(f'torchvision=={major - 2}.{minor + 15}.*' if major == 2 else '')")
  if [ -n "$vision" ]; then pins+=("$vision"); fi
fi
"$PY" -m pip install --quiet -e ".${extras}" ${pins[@]+"${pins[@]}"}
"$PY" -c "import torch, msrs; print(f'msrs {msrs.__version__} installed (torch {torch.__version__})')"
