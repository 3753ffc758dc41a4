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
  *) echo "install.sh: expected no argument or 'test', got '$1'" >&2; exit 2 ;;
esac
"$PY" -m pip install --quiet -e ".${extras}"
"$PY" -c "import torch, msrs; print(f'msrs {msrs.__version__} installed (torch {torch.__version__})')"
