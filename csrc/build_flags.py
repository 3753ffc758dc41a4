"""Compiler and linker flags of the msrs C++ ops, shared by the JIT build (msrs/ops/cpp_backend.py) and the
ahead-of-time build (setup.py with MSRS_BUILD_EXT=1, which loads this file by path with runpy).

Kept importable without msrs: only the standard library and torch.

- -O3 vectorises the inner loops for the baseline ISA of the target (no -march=native: the .so may be built on one
  machine and run on another).
- -ffp-contract=off: no fused multiply-adds, so every fp32 step rounds as in the torch reference, and the scalar
  and vector paths of a loop give bitwise identical results.
- -fno-math-errno lets sqrt vectorise; it changes no result (no -ffast-math: that would break NaN semantics).
- -fopenmp only where torch itself uses OpenMP: at::parallel_for is then an inline `omp parallel` region.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ("ops.cpp",)  # compiled
HEADERS = ("philox.h",)  # included
BASE_CFLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]


def torch_uses_openmp() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - setup.py only loads this with torch installed
        return False
    return "OpenMP" in torch.__config__.parallel_info() and "ATen parallel backend: OpenMP" in (
        torch.__config__.parallel_info()
    )


def source_hash(directory: str | Path = HERE) -> str:
    """sha256 (hex) of the C++ sources and headers: baked into the extension (MSRS_SOURCE_HASH) so a loader can
    tell an ahead-of-time build made from other sources, and part of the JIT build folder's name."""
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update(name.encode() + b"\0" + (Path(directory) / name).read_bytes() + b"\0")
    return digest.hexdigest()


def cpp_extension_flags() -> tuple[list[str], list[str]]:
    """(extra_cflags, extra_ldflags) for torch.utils.cpp_extension."""
    cflags, ldflags = list(BASE_CFLAGS), []
    cflags.append(f"-DMSRS_SOURCE_HASH=h{source_hash()[:32]}")
    if torch_uses_openmp():
        cflags.append("-fopenmp")
        ldflags.append("-fopenmp")
    return cflags, ldflags
