"""Backend selection: the fastest available backend for a tensor's device, or the one the caller forces.

Backends: "torch" (msrs.ops.reference, everywhere), "cpp" (csrc/, CPU tensors), "triton" (msrs.kernels, CUDA
tensors; CPU tensors too under TRITON_INTERPRET=1, for tests). Force one with backend=... or MSRS_BACKEND=...;
a forced backend that cannot run raises BackendUnavailable saying why, never a silent fallback.
"""
from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

BACKENDS = ("torch", "cpp", "triton")
ENV_VAR = "MSRS_BACKEND"


class BackendUnavailable(RuntimeError):
    """A backend was asked for that cannot run here; the message says why."""


def _module(name: str) -> ModuleType:
    if name == "torch":
        from . import reference

        return reference
    if name == "cpp":
        from . import cpp_backend

        return cpp_backend
    from . import triton_backend

    return triton_backend


def unavailable_reason(name: str, device: torch.device) -> str | None:
    """None when backend `name` can run on `device`, else a sentence saying why not."""
    if name == "torch":
        return None
    if name == "cpp":
        if device.type != "cpu":
            return f"the cpp backend runs on CPU tensors, got a tensor on {device}"
        from . import cpp_backend

        return cpp_backend.load_error()
    try:
        from . import triton_backend
    except ImportError as err:  # a broken triton install must not break the other backends
        return f"the triton backend cannot be imported ({err})"
    return triton_backend.unavailable_reason(device)


def resolve_backend(requested: str | None, device: torch.device) -> str:
    """The backend name to run on `device`: the requested one, else $MSRS_BACKEND, else the fastest available.

    Resolved once per (request, environment, device) and cached: the ops call this on every batch, and a vote
    count on a CIFAR batch takes only ~5 us, so the lookup must cost far less. Failures are not cached."""
    environment = (os.environ.get(ENV_VAR) or None, os.environ.get("TRITON_INTERPRET"))
    resolve = _resolve_cached.__wrapped__ if torch.compiler.is_compiling() else _resolve_cached  # dynamo skips caches
    return resolve(requested, environment, device.type, device.index)


@functools.lru_cache(maxsize=64)
def _resolve_cached(requested: str | None, environment: tuple, device_type: str, device_index: int | None) -> str:
    """environment: ($MSRS_BACKEND, $TRITON_INTERPRET), the variables that change the answer."""
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    forced = requested if requested is not None else environment[0]
    if forced is not None:
        if forced not in BACKENDS:
            source = "backend" if requested is not None else ENV_VAR
            raise ValueError(f"{source}: expected one of {', '.join(BACKENDS)}, got {forced!r}")
        reason = unavailable_reason(forced, device)
        if reason:
            raise BackendUnavailable(f"backend {forced!r} is not available: {reason}")
        return forced
    preferred = ("triton", "torch") if device.type == "cuda" else ("cpp", "torch")
    return next(name for name in preferred if unavailable_reason(name, device) is None)


@functools.lru_cache(maxsize=None)
def backend_module(name: str) -> ModuleType:
    return _module(name)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    device = torch.device(device)
    return [name for name in BACKENDS if unavailable_reason(name, device) is None]
