"""Automatic batch size: run a unit of work at the largest batch size that fits, halving on out-of-memory.

  find_batch_size(run_batch, start, minimum=1, device=None) -> AutoBatchResult
      calls run_batch(b) for b = start, start // 2, ... (never below `minimum`) until one call finishes without
      running out of memory; returns its result, the batch size that worked, the sizes tried and the peak memory.
  AutoBatcher(start, minimum=1, device=None)
      the same, remembering the size that worked, so a long run only searches once:
      ``batcher = AutoBatcher(4096); counts = batcher(lambda b: engine.sample_counts(..., batch_size=b))``

Contract for run_batch (what makes a retry safe): run_batch(b) does a *whole* unit of work with batch size b and
returns its result; it must not leave partial results in state the caller keeps (accumulate into a tensor it
allocates itself, or zero the caller's buffer first). A call that ran out of memory is thrown away and the unit is
re-run from scratch at half the size, so a result is either complete or not returned at all. With the
counter-based noise (msrs.ops.philox) the result does not depend on the batch size, so the retry gives exactly the
votes the first try would have given. run_batch must not contain collectives (msrs.distributed): ranks may retry
different numbers of times.

Out-of-memory means: torch.cuda.OutOfMemoryError; a RuntimeError whose message says "out of memory" (CUDA, HIP,
MPS, XPU) or reports the CPU allocator's failure ("DefaultCPUAllocator: can't allocate memory"), or a cuBLAS /
cuDNN allocation failure; and Python's MemoryError (numpy's "Unable to allocate"). Any other error propagates
untouched on the first occurrence. At `minimum` the out-of-memory error itself propagates.

Peak memory: on CUDA, torch.cuda.max_memory_allocated of the device over the successful call (the peak stats are
reset before each try); on CPU, the process's peak resident set size. On Linux the peak is reset before each try
(``/proc/self/clear_refs``), so it is the peak of the successful call; where that is not possible it is the
process's lifetime peak (resource.getrusage), an upper bound.
"""
from __future__ import annotations

import gc
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["AutoBatchResult", "AutoBatcher", "find_batch_size", "is_out_of_memory", "peak_memory_bytes"]

_OOM_MESSAGES = (
    "out of memory",  # CUDA / HIP / MPS / XPU caching allocators, "CUDA error: out of memory"
    "can't allocate memory",  # "DefaultCPUAllocator: can't allocate memory: you tried to allocate ..."
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
)


AUTO_START = 1 << 16
"""Where `--batch-size auto` starts: 65,536 samples, more than any device needs to be full; the engine halves it on
each out-of-memory error and keeps the size that fitted for the rest of the run."""


def is_out_of_memory(error: BaseException) -> bool:
    """True for the errors find_batch_size treats as out-of-memory (see the module docstring)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    if isinstance(error, MemoryError):
        return True
    if isinstance(error, RuntimeError):
        message = str(error).lower()
        return any(text in message for text in _OOM_MESSAGES)
    return False


def _cuda_device(device) -> torch.device | None:
    if device is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.device("cuda", torch.cuda.current_device())
        return None
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def _reset_cpu_peak() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0). True when it worked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_peak_bytes() -> int:
    """Peak RSS: VmHWM from /proc/self/status (Linux), else resource.getrusage's ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


def peak_memory_bytes(device=None) -> int:
    """Peak memory now: torch.cuda.max_memory_allocated on a CUDA device, else the process's peak RSS."""
    cuda = _cuda_device(device)
    if cuda is not None:
        return int(torch.cuda.max_memory_allocated(cuda))
    return _cpu_peak_bytes()


def _reset_peak(device) -> None:
    cuda = _cuda_device(device)
    if cuda is not None:
        torch.cuda.reset_peak_memory_stats(cuda)
    else:
        _reset_cpu_peak()


def _release_memory(device) -> None:
    gc.collect()  # tensors kept alive by the dropped traceback's frames and reference cycles
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = _cuda_device(device)
        if cuda is not None:
            with torch.cuda.device(cuda):
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
        else:
            torch.cuda.empty_cache()


@dataclass
class AutoBatchResult:
    result: Any  # what the successful run_batch(batch_size) returned
    batch_size: int  # the batch size that worked
    tried: list[int] = field(default_factory=list)  # every size tried, in order (the last one worked)
    peak_memory_bytes: int = 0  # peak memory of the successful try (see the module docstring)
    memory_kind: str = "cpu_rss"  # "cuda_allocated" or "cpu_rss"

    @property
    def retries(self) -> int:
        return len(self.tried) - 1


def find_batch_size(
    run_batch: Callable[[int], Any], start: int, minimum: int = 1, *, device=None
) -> AutoBatchResult:
    """Run run_batch(b) from b = start, halving b after each out-of-memory error, never below `minimum`.

    Returns an AutoBatchResult with the successful call's result. Errors that are not out-of-memory propagate at
    once, untouched; an out-of-memory error at b == minimum propagates too. device: where the work runs (for the
    peak memory and the cache to empty); default: the current CUDA device if CUDA is initialised, else the CPU.
    """
    if not callable(run_batch):
        raise TypeError(f"run_batch: expected a callable, got {type(run_batch).__name__}")
    start, minimum = operator.index(start), operator.index(minimum)
    if minimum < 1:
        raise ValueError(f"minimum: expected >= 1, got {minimum}")
    if start < minimum:
        raise ValueError(f"start: expected >= minimum = {minimum}, got {start}")
    memory_kind = "cuda_allocated" if _cuda_device(device) is not None else "cpu_rss"
    size, tried = start, []
    while True:
        tried.append(size)
        _reset_peak(device)
        failed = False
        try:
            result = run_batch(size)
        except BaseException as error:  # noqa: BLE001 - filtered just below, everything else re-raised as is
            if not is_out_of_memory(error) or size <= minimum:
                raise
            failed = True
            # leave the except block before cleaning up: the exception's traceback keeps the failed call's
            # frames (and their tensors) alive until it is dropped
        if not failed:
            return AutoBatchResult(result, size, tried, peak_memory_bytes(device), memory_kind)
        _release_memory(device)
        size = max(minimum, size // 2)


class AutoBatcher:
    """find_batch_size that remembers the size that worked: each call starts from the last good size.

    ``batcher(run_batch)`` returns run_batch's result; ``batcher.batch_size``, ``batcher.peak_memory_bytes``
    (the largest peak seen) and ``batcher.history`` (one AutoBatchResult per call, results dropped) report it.
    """

    def __init__(self, start: int, minimum: int = 1, *, device=None):
        start, minimum = operator.index(start), operator.index(minimum)
        if minimum < 1 or start < minimum:
            raise ValueError(f"expected 1 <= minimum <= start, got minimum={minimum}, start={start}")
        self.batch_size, self.minimum, self.device = start, minimum, device
        self.peak_memory_bytes = 0
        self.history: list[AutoBatchResult] = []

    def __call__(self, run_batch: Callable[[int], Any]) -> Any:
        found = find_batch_size(run_batch, self.batch_size, self.minimum, device=self.device)
        self.batch_size = found.batch_size
        self.peak_memory_bytes = max(self.peak_memory_bytes, found.peak_memory_bytes)
        self.history.append(AutoBatchResult(None, found.batch_size, found.tried, found.peak_memory_bytes, found.memory_kind))
        return found.result
