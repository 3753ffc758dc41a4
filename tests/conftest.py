"""Shared test helpers: which (backend, device) pairs of the fused ops can run here, and tolerances per dtype."""
from __future__ import annotations

import os

import pytest
import torch

import msrs  # noqa: F401 - first: msrs.torchvision_compat must see torchvision's import (test modules import diffusers)


def triton_interpreted() -> bool:
    """True when Triton runs through its CPU interpreter (about 5 ms per program: tiny shapes only)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def backend_available(name: str, device: str) -> bool:
    from msrs.ops import dispatch

    try:
        return dispatch.unavailable_reason(name, torch.device(device)) is None
    except ImportError:  # a backend module that is not there (yet) is simply not available
        return False


def candidate_backends() -> list[tuple[str, str]]:
    """(backend, device) pairs worth testing against msrs.ops.reference here: cpp on CPU, triton on CUDA when there
    is a GPU, triton on CPU under TRITON_INTERPRET=1. Cheap (nothing is built); the fixture checks availability."""
    pairs = [("cpp", "cpu")]
    if torch.cuda.is_available():
        pairs.append(("triton", "cuda"))
    if triton_interpreted():
        pairs.append(("triton", "cpu"))
    return pairs


def is_interpreted(backend: str, device: str) -> bool:
    return backend == "triton" and device == "cpu"


def tolerance(dtype: torch.dtype) -> dict:
    """assert_close tolerances for outputs stored in `dtype` whose fp32 values differ from the reference's by the
    rounding of ln/sin/cos (a few 1e-7): one unit of rounding in the output dtype, plus that."""
    return {
        torch.float32: {"rtol": 1e-5, "atol": 2e-5},
        torch.float16: {"rtol": 2e-3, "atol": 1e-3},
        torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2},
    }[dtype]


@pytest.fixture(params=candidate_backends(), ids=lambda p: "-".join(p))
def backend_device(request) -> tuple[str, str]:
    """Each accelerated (backend, device) pair; skips (saying why) when it cannot run here."""
    name, device = request.param
    from msrs.ops import dispatch

    try:
        reason = dispatch.unavailable_reason(name, torch.device(device))
    except ImportError as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if reason:
        pytest.skip(f"backend {name!r} on {device} is not available: {reason}")
    return name, device


def fastest_cpu_backend() -> str:
    """The C++ backend when it can run here (much faster on CPU; built on first use), else the torch reference."""
    from msrs.ops import dispatch

    try:
        return "cpp" if dispatch.unavailable_reason("cpp", torch.device("cpu")) is None else "torch"
    except ImportError:
        return "torch"
