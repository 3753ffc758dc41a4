"""Shared test helpers: which (backend, device) pairs of the fused ops can run here, tolerances per dtype, and the
required backends.

Required backends. MSRS_REQUIRE_BACKENDS (a comma list of "cpp" and "triton"; .ci/run sets "cpp", plus "triton"
where torch sees a GPU) names the accelerated backends that must work on this machine: cpp on CPU tensors, triton
on CUDA tensors. For a required backend, every place where a test would skip or quietly fall back to the torch
reference because the backend cannot run fails instead, saying why:
  - the backend_device fixture and skip_or_fail() (run time), module-level skips (collection time);
  - fastest_cpu_backend() answers "cpp" whatever happens, so the engine tests using it fail with
    BackendUnavailable and the build error;
  - the automatic backend choice (msrs.ops.dispatch, backend=None and no MSRS_BACKEND) is watched for the whole
    session: picking another backend than the required one for a device fails the test that asked.
Unset (a developer's machine without a compiler, say), a missing backend skips as before.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

import msrs  # noqa: F401 - first: msrs.torchvision_compat must see torchvision's import (test modules import diffusers)


ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    """A script of the repository that is not part of the package (benchmarks/, .ci/) imported as a module, from
    its path relative to the repository root. It is in sys.modules only while it runs (dataclasses look their
    module up then), so that loading it in several test files never shares state."""
    name = "msrs_script_" + relative.replace("/", "_").replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module

# dtype "auto" (the default of the engine and of msrs certify) means bfloat16 on CPUs with native bf16: pin it to
# float32 so that the exact comparisons of the suite do not depend on the machine (tests/test_hardware.py unpins it)
os.environ["MSRS_AUTO_DTYPE"] = "float32"

REQUIRE_ENV = "MSRS_REQUIRE_BACKENDS"
NATIVE_DEVICE = {"cpp": "cpu", "triton": "cuda"}  # where a required backend must run


def required_backends() -> frozenset:
    """The backends named by MSRS_REQUIRE_BACKENDS (empty when unset); a name msrs does not know is an error."""
    names = {name.strip() for name in os.environ.get(REQUIRE_ENV, "").split(",") if name.strip()}
    unknown = sorted(names - set(NATIVE_DEVICE))
    if unknown:
        raise pytest.UsageError(f"{REQUIRE_ENV}: unknown backends {unknown}; expected a comma list of "
                                f"{', '.join(NATIVE_DEVICE)}")
    return frozenset(names)


def skip_or_fail(backend: str, reason: str, *, allow_module_level: bool = False):
    """Skip (a test that needs `backend`, which cannot run here), or fail when `backend` is required."""
    __tracebackhide__ = True  # the skip is reported at the caller's line
    if backend in required_backends():
        pytest.fail(f"{REQUIRE_ENV} requires backend {backend!r}, but it is not available: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


def triton_interpreted() -> bool:
    """True when Triton runs through its CPU interpreter (about 5 ms per program: tiny shapes only)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason(name: str, device: str) -> str | None:
    """None when backend `name` can run on `device`, else why not (a backend module that cannot be imported is
    simply not available)."""
    from msrs.ops import dispatch

    try:
        return dispatch.unavailable_reason(name, torch.device(device))
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"


def backend_available(name: str, device: str) -> bool:
    return unavailable_reason(name, device) is None


def candidate_backends() -> list[tuple[str, str]]:
    """(backend, device) pairs worth testing against msrs.ops.reference here: cpp on CPU, triton on CUDA when there
    is a GPU (or when triton is required: then its absence fails), triton on CPU under TRITON_INTERPRET=1. Cheap
    (nothing is built); the fixture checks availability."""
    pairs = [("cpp", "cpu")]
    if torch.cuda.is_available() or "triton" in required_backends():
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
    """Each accelerated (backend, device) pair; skips (saying why) when it cannot run here, fails when the backend
    is required on that device."""
    name, device = request.param
    reason = unavailable_reason(name, device)
    if reason:
        message = f"backend {name!r} on {device} is not available: {reason}"
        if NATIVE_DEVICE[name] == device:
            skip_or_fail(name, message)
        pytest.skip(message)  # e.g. triton on CPU tensors: the interpreter is never required
    return name, device


def fastest_cpu_backend() -> str:
    """The C++ backend when it can run here (much faster on CPU; built on first use), else the torch reference.
    When cpp is required, cpp: a test that uses it then fails with BackendUnavailable and the reason."""
    if "cpp" in required_backends():
        return "cpp"
    return "cpp" if backend_available("cpp", "cpu") else "torch"


# ------------------------------------------------------------------------------ the automatic choice is watched
def _fallback_message(device_type: str, chosen: str) -> str | None:
    wanted = sorted(b for b in required_backends() if NATIVE_DEVICE[b] == device_type)
    if not wanted or chosen in wanted:
        return None
    reasons = "; ".join(f"{b}: {unavailable_reason(b, device_type)}" for b in wanted)
    return (f"{REQUIRE_ENV} requires {wanted} on {device_type} tensors, but the automatic backend choice fell back "
            f"to {chosen!r} ({reasons})")


def pytest_configure(config):
    required = required_backends()  # a bad value stops the run before anything is collected
    if not required:
        return
    from msrs.ops import dispatch

    original = dispatch._resolve_cached

    def watched(requested, environment, device_type, device_index):
        chosen = original(requested, environment, device_type, device_index)
        if requested is None and environment[0] is None:  # automatic, not forced by the caller or MSRS_BACKEND
            message = _fallback_message(device_type, chosen)
            if message:
                pytest.fail(message, pytrace=False)
        return chosen

    watched.__wrapped__ = original.__wrapped__  # dispatch calls this one while torch.compile traces (uncached)
    watched.cache_clear = original.cache_clear
    dispatch._resolve_cached = watched


def pytest_report_header(config):
    required = required_backends()
    if not required:
        return f"{REQUIRE_ENV}: not set (a missing accelerated backend skips its tests)"
    states = [f"{b} on {NATIVE_DEVICE[b]}: {unavailable_reason(b, NATIVE_DEVICE[b]) or 'available'}"
              for b in sorted(required)]
    return f"{REQUIRE_ENV}={','.join(sorted(required))} ({'; '.join(states)})"
