#!/usr/bin/env bash
# Downloads (here, with network) the wheels that benchmarks/device_check.sh installs on a GPU machine that has no
# network and lacks them: diffusers and importlib_metadata (the rest of msrs's dependencies are in that machine's
# image). Python 3.12, x86-64 Linux, pure-Python wheels, versions pinned to those tested here.
#
#   bash benchmarks/fetch_wheels.sh [DEST]     # default DEST: wheelhouse/ (ignored by git; carry it to the GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-wheelhouse}
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" diffusers==0.42.1 importlib_metadata==8.7.0 zipp==3.23.0
ls -l "$DEST"
du -sh "$DEST"
