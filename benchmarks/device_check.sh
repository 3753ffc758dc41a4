#!/usr/bin/env bash
# The single prepared GPU check of issue 15: docs/GPU.md says what it runs, how to run it with the device tool,
# and what each number means.
#
#   bash benchmarks/device_check.sh OUTDIR               # on a GPU (H100 class), at most ~8 minutes, no network
#   bash benchmarks/device_check.sh OUTDIR --cpu-smoke   # every step at tiny sizes on a CPU (about a minute)
#   bash benchmarks/device_check.sh OUTDIR --steps setup,sequential_denoised   # the second call: issue 14's
#       sequential savings with the denoiser at N = 100,000 (at most 450 s of step limits)
#
# Writes OUTDIR/summary.json and one log per step. Missing wheels (diffusers) are installed from ./wheelhouse (or
# $MSRS_WHEELHOUSE), made beforehand by `bash benchmarks/fetch_wheels.sh` on a machine with network.
set -uo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: bash benchmarks/device_check.sh OUTDIR [--cpu-smoke] [--steps a,b] [--sequential-seconds S]" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET MSRS_BACKEND  # the GPU run checks compiled kernels and the automatic backend choice
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHON
exec "$PYTHON" benchmarks/device_check.py "$@"
