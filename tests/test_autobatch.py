"""msrs.autobatch: halving on out-of-memory, other errors untouched, no partial results, peak memory reported."""
from __future__ import annotations

import pytest
import torch

from msrs.autobatch import AutoBatcher, find_batch_size, is_out_of_memory, peak_memory_bytes

CPU_OOM = "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"


class FakeWork:
    """Sums 0..total-1 in batches of b; raises an out-of-memory error when b > limit (after doing part of the
    work, to show the partial result is never returned)."""

    def __init__(self, limit, total=1000, error=lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")):
        self.limit, self.total, self.error, self.calls = limit, total, error, []

    def __call__(self, b):
        self.calls.append(b)
        acc = torch.zeros((), dtype=torch.int64)  # the result is built from scratch in every call
        for start in range(0, self.total, b):
            acc += torch.arange(start, min(start + b, self.total)).sum()
            if b > self.limit:  # fails midway, with a partial sum in hand
                raise self.error()
        return int(acc)


EXPECTED = sum(range(1000))


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        lambda: RuntimeError(CPU_OOM),
        lambda: RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
        lambda: torch.cuda.OutOfMemoryError("CUDA out of memory."),
        lambda: MemoryError("Unable to allocate 8.00 GiB for an array"),
    ],
)
def test_halves_until_it_fits(make_error):
    work = FakeWork(limit=100, error=make_error)
    found = find_batch_size(work, 1000)
    assert found.result == EXPECTED
    assert found.batch_size == 62
    assert found.tried == [1000, 500, 250, 125, 62] == work.calls
    assert found.retries == 4
    assert found.memory_kind == "cpu_rss" and found.peak_memory_bytes > 0


def test_start_that_fits_runs_once():
    work = FakeWork(limit=10_000)
    found = find_batch_size(work, 512)
    assert (found.result, found.batch_size, found.tried) == (EXPECTED, 512, [512])


def test_minimum_is_respected_and_oom_propagates_there():
    work = FakeWork(limit=3, total=100)
    found = find_batch_size(work, 100, minimum=3)
    assert found.tried == [100, 50, 25, 12, 6, 3] and found.result == sum(range(100))
    work = FakeWork(limit=3, total=100)
    with pytest.raises(RuntimeError, match="out of memory"):
        find_batch_size(work, 100, minimum=5)
    assert work.calls == [100, 50, 25, 12, 6, 5]


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad input"),
        RuntimeError("Expected all tensors to be on the same device"),
        RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
        KeyError("x"),
    ],
)
def test_other_errors_propagate_untouched(error):
    calls = []

    def run(b):
        calls.append(b)
        raise error

    with pytest.raises(type(error)) as info:
        find_batch_size(run, 256)
    assert info.value is error  # the very same object, not wrapped
    assert calls == [256]  # no retry


def test_keyboard_interrupt_is_not_swallowed():
    def run(b):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        find_batch_size(run, 8)


def test_validation():
    with pytest.raises(ValueError, match="minimum"):
        find_batch_size(lambda b: b, 4, minimum=0)
    with pytest.raises(ValueError, match="start"):
        find_batch_size(lambda b: b, 2, minimum=4)
    with pytest.raises(TypeError):
        find_batch_size(lambda b: b, 2.5)
    with pytest.raises(TypeError, match="callable"):
        find_batch_size(None, 2)


def test_is_out_of_memory():
    assert is_out_of_memory(RuntimeError(CPU_OOM))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"))
    assert not is_out_of_memory(RuntimeError("index out of range"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only RuntimeError messages are read


def test_real_cpu_allocation_failure_is_caught():
    """A genuine CPU allocator failure (an absurd allocation) is recognised and the size halved."""

    def run(b):
        if b > 4:
            torch.empty(b << 40, dtype=torch.uint8)  # b TiB: the allocator refuses
        return b

    found = find_batch_size(run, 64)
    assert found.batch_size == 4 and found.result == 4


def test_cpu_peak_memory_tracks_the_successful_call():
    before = peak_memory_bytes()
    size = 256 << 20

    def run(b):
        x = torch.ones(size, dtype=torch.uint8)  # 256 MiB, touched
        return int(x[::4096].sum())

    found = find_batch_size(run, 1)
    assert found.peak_memory_bytes >= size
    assert found.peak_memory_bytes >= before or found.peak_memory_bytes >= size


def test_autobatcher_remembers_the_size():
    batcher = AutoBatcher(1024)
    work = FakeWork(limit=300)
    assert batcher(work) == EXPECTED
    assert batcher.batch_size == 256
    work2 = FakeWork(limit=300)
    assert batcher(work2) == EXPECTED
    assert work2.calls == [256]  # no search the second time
    assert [h.tried for h in batcher.history] == [[1024, 512, 256], [256]]
    assert batcher.peak_memory_bytes > 0
