"""The Triton backend: kernels/ (installed as msrs.kernels) behind the reference's three signatures.

It runs on CUDA tensors; on CPU tensors only under TRITON_INTERPRET=1 (the tests), which must be set before
msrs.kernels is imported, since Triton decides at decoration time whether a kernel is compiled or interpreted.
unavailable_reason(device) says why the backend cannot run (None when it can); the dispatcher then picks another
backend, or raises BackendUnavailable with that sentence when triton was forced.

The functions expect what msrs.ops passes after its checks (same device, int64 rows and indices, fp32 coeffs);
they make the tensors contiguous and launch one kernel each, with no host sync.
"""
from __future__ import annotations

import importlib
import os
import threading
from types import ModuleType

import torch

_TRUE = ("1", "true", "on", "yes")
_lock = threading.Lock()
_kernels: ModuleType | None = None
_import_error: str | None = None
_driver_error: str | None = None
_driver_checked = False


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


def _load() -> tuple[ModuleType | None, str | None]:
    """Import msrs.kernels once; (module, None) or (None, why not)."""
    global _kernels, _import_error
    with _lock:
        if _kernels is None and _import_error is None:
            try:
                _kernels = importlib.import_module("msrs.kernels")
            except ImportError as error:  # triton missing, or a triton too old for the kernels
                _import_error = f"triton could not be imported ({type(error).__name__}: {error})"
            except Exception as error:  # noqa: BLE001 - any failure while decorating the kernels
                _import_error = f"msrs.kernels failed to load ({type(error).__name__}: {error})"
        return _kernels, _import_error


def _gpu_driver_error() -> str | None:
    """None when Triton has an active GPU driver, else why not (checked once)."""
    global _driver_error, _driver_checked
    with _lock:
        if not _driver_checked:
            try:
                from triton.runtime import driver

                driver.active.get_current_target()
            except Exception as error:  # noqa: BLE001 - e.g. "0 active drivers" on a machine without a GPU
                _driver_error = f"Triton has no usable GPU driver ({type(error).__name__}: {error})"
            _driver_checked = True
        return _driver_error


def unavailable_reason(device: torch.device | str) -> str | None:
    """None when the Triton kernels can run on tensors on `device`, else a sentence saying why not.

    CPU tensors need the interpreter both when msrs.kernels was imported (that decides whether its kernels are
    interpreted) and now (so that a test module that interpreted the kernels for itself does not make the
    slow interpreter the answer for every other caller that asks about CPU tensors later).
    """
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        return f"the triton backend runs on CUDA tensors, got a tensor on {device}"
    if device.type == "cpu" and not _interpret_requested():
        return ("the triton backend runs on CUDA tensors (CPU tensors only in the Triton interpreter, "
                "TRITON_INTERPRET=1, for tests), got a tensor on cpu")
    kernels, error = _load()
    if error:
        return error
    if kernels.INTERPRET:
        return None  # interpreted kernels run on CPU tensors, and on CUDA tensors through host copies
    if device.type == "cpu":
        return ("msrs.kernels was imported before TRITON_INTERPRET=1 was set, so its kernels are compiled for a "
                "GPU and cannot take CPU tensors; set TRITON_INTERPRET=1 before anything imports msrs.kernels")
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return _gpu_driver_error()


def _kernels_or_raise() -> ModuleType:
    kernels, error = _load()
    if error:
        raise RuntimeError(error)
    return kernels


def sample_noisy(x: torch.Tensor, rows: torch.Tensor, coeffs: torch.Tensor, seed: int, out_dtype: torch.dtype):
    kernels = _kernels_or_raise()
    with _device_guard(x.device):
        return kernels.sample_noisy(
            x.contiguous(), rows.to(torch.int64).contiguous(), coeffs.to(torch.float32).contiguous(), int(seed),
            out_dtype,
        )


def finalize_denoised(x_t, eps, coeffs, mean, std, out_dtype: torch.dtype):
    kernels = _kernels_or_raise()
    with _device_guard(x_t.device):
        return kernels.finalize_denoised(
            x_t.contiguous(), eps.contiguous(), coeffs.to(torch.float32).contiguous(),
            mean.to(torch.float32).contiguous(), std.to(torch.float32).contiguous(), out_dtype,
        )


def count_votes_(counts: torch.Tensor, scores: torch.Tensor, index: torch.Tensor) -> None:
    kernels = _kernels_or_raise()
    if not counts.is_contiguous():
        raise ValueError("counts: expected a contiguous tensor (it is updated in place)")
    with _device_guard(counts.device):
        kernels.count_votes_(counts, scores.contiguous(), index.to(torch.int64).contiguous())


class _device_guard:  # noqa: N801
    """torch.cuda.device(d) for CUDA tensors (Triton launches on the current device), a no-op otherwise."""

    def __init__(self, device: torch.device) -> None:
        self._inner = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self) -> None:
        if self._inner is not None:
            self._inner.__enter__()

    def __exit__(self, *exc) -> None:
        if self._inner is not None:
            self._inner.__exit__(*exc)
