"""torch.distributed support: one certification split over several processes (GPUs, nodes).

Launch with torchrun, e.g. ``torchrun --nproc-per-node 4 -m msrs certify ...`` (one node, four GPUs) or with
``--nnodes``, ``--rdzv-backend c10d`` and ``--rdzv-endpoint host:port`` on a cluster (docs/DISTRIBUTED.md).
torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in every process;
``init_from_env`` reads them and does nothing when they are absent, so the same code runs unlaunched.

What is split: each image's sample range [0, n) of a noise stream. Rank r counts the samples
``split_range(0, n, r, world)`` (contiguous, disjoint, covering), then ``all_reduce_counts_`` sums the counts of
all ranks in place. The noise of a sample is keyed by (seed, image id, *global* sample index, stream)
(msrs.ops.philox), so the union of the ranks' samples is exactly the set of samples one process would draw: every
rank ends with the counts of the single-process run, takes the same decisions and computes the same
certificates; rank 0 alone writes the log.

Everything here is a no-op (rank 0 of a world of 1) in a process not launched by torchrun.
"""
from __future__ import annotations

import builtins
import datetime
import operator
import os
import warnings

import torch
import torch.distributed as dist

__all__ = [
    "all_reduce_counts_",
    "barrier",
    "broadcast_object",
    "decided_on_main",
    "init_from_env",
    "is_initialized",
    "is_main",
    "launched_by_torchrun",
    "local_rank",
    "local_range",
    "rank",
    "shutdown",
    "split_range",
    "world_size",
]

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# set by init_from_env when it created the process group (so shutdown only destroys what we made)
_OWNED_GROUP = False


def launched_by_torchrun() -> bool:
    """True when RANK and WORLD_SIZE are in the environment (torchrun, or an srun wrapper exporting them)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE"))


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise RuntimeError(f"{name} is not set: expected torchrun to set it")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None


def init_from_env(device: torch.device | str | None = None, *, timeout_s: float | None = None) -> torch.device:
    """Join the process group torchrun describes in the environment; return the device this rank must use.

    Not launched by torchrun (no RANK / WORLD_SIZE): does nothing and returns ``device`` (default cpu).
    Backend: nccl for a CUDA device, gloo otherwise. For CUDA the rank's device is ``cuda:LOCAL_RANK`` (one process
    per GPU, as torchrun starts them) and becomes the current CUDA device; an explicit index in ``device`` is
    replaced by LOCAL_RANK when the world has more than one process. Calling it again is harmless.
    timeout_s: how long a collective may wait for the other ranks (torch's default when None).
    """
    global _OWNED_GROUP
    device = torch.device("cpu" if device is None else device)
    if not launched_by_torchrun():
        return device
    world, global_rank, local = _env_int("WORLD_SIZE"), _env_int("RANK"), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= global_rank < world:
        raise ValueError(f"RANK / WORLD_SIZE: expected 0 <= RANK < WORLD_SIZE, got RANK={global_rank}, WORLD_SIZE={world}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda was asked for, but CUDA is not available in this process")
        count = torch.cuda.device_count()
        if local >= count:
            raise RuntimeError(
                f"LOCAL_RANK={local} but only {count} CUDA device(s) are visible: start at most {count} processes "
                "per node (torchrun --nproc-per-node), or give each process its own CUDA_VISIBLE_DEVICES"
            )
        if device.index is not None and device.index != local and world > 1:
            warnings.warn(f"device {device}: using cuda:{local} (LOCAL_RANK) instead, one GPU per process", stacklevel=2)
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if is_initialized():
        return device
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise RuntimeError("NCCL is not available in this torch build (a CPU wheel?): run on CPU with gloo instead")
    kwargs = {}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=float(timeout_s))
    if backend == "nccl":
        kwargs["device_id"] = device  # binds the communicator to this rank's GPU (barrier, eager init)
    dist.init_process_group(backend=backend, rank=global_rank, world_size=world, **kwargs)
    _OWNED_GROUP = True
    return device


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """The rank within this node (LOCAL_RANK; 0 when not distributed)."""
    return _env_int("LOCAL_RANK", 0) if is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (the process that writes logs and prints); True when not distributed."""
    return rank() == 0


def split_range(start: int, stop: int, rank: int, world: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous share [lo, hi) of [start, stop) among `world` ranks.

    The shares are disjoint, cover [start, stop) in rank order and differ in size by at most one (the first
    (stop - start) % world ranks get one more); ranks past the end get an empty range (lo == hi). Pure arithmetic:
    every rank computes every share identically.
    """
    values = []
    for name, value in (("start", start), ("stop", stop), ("rank", rank), ("world", world)):
        if isinstance(value, bool):
            raise TypeError(f"{name}: expected an int, got bool")
        try:
            values.append(operator.index(value))  # int, numpy integers; refuses floats
        except TypeError:
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}") from None
    start, stop, rank, world = values
    if world < 1:
        raise ValueError(f"world: expected >= 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"rank: expected 0 <= rank < world = {world}, got {rank}")
    if stop < start:
        raise ValueError(f"stop: expected >= start = {start}, got {stop}")
    base, extra = divmod(stop - start, world)
    lo = start + rank * base + min(rank, extra)
    hi = lo + base + (1 if rank < extra else 0)
    return lo, hi


def local_range(start: int, stop: int) -> tuple[int, int]:
    """This process's share of [start, stop): split_range(start, stop, rank(), world_size())."""
    return split_range(start, stop, rank(), world_size())


def _reduce_device() -> torch.device | None:
    backend = dist.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if backend == "gloo":
        return torch.device("cpu")
    return None  # other backends (mpi, ucc, custom): hand them the tensor as it is


def all_reduce_counts_(counts: torch.Tensor) -> torch.Tensor:
    """Sum `counts` over all ranks, in place; returns counts. No-op in a single process.

    Works for any integer (or float) tensor on any device: it is moved to the backend's device (cuda for nccl,
    cpu for gloo) for the reduction when it is not there, and copied back. A collective: every rank must call
    it, in the same order, with a tensor of the same shape and dtype.
    """
    if not isinstance(counts, torch.Tensor):
        raise TypeError(f"counts: expected a torch.Tensor, got {type(counts).__name__}")
    if not is_initialized() or dist.get_world_size() == 1:
        return counts
    target = _reduce_device()
    work = counts
    if (target is not None and counts.device != target) or not counts.is_contiguous():
        work = counts.to(device=target or counts.device).contiguous()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    if work is not counts:
        counts.copy_(work)
    return counts


def broadcast_object(obj, src: int = 0):
    """Rank src's `obj` on every rank (pickled; for small things such as the list of images still to certify
    when resuming, so all ranks agree on the work). Returns obj unchanged in a single process."""
    if not is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def decided_on_main(decide):
    """decide() on rank 0 alone, its result on every rank; an error there is raised on every rank (the same message,
    as the nearest built-in exception type), so that a refusal stops all ranks instead of leaving them waiting in
    their first collective. In a single process: decide()."""
    if not is_initialized() or dist.get_world_size() == 1:
        return decide()
    if is_main():
        try:
            result = decide()
        except Exception as err:
            broadcast_object(("error", _error_kind(err), str(err)))
            raise
        broadcast_object(("ok", result, None))
        return result
    outcome, result, message = broadcast_object(None)
    if outcome == "error":
        raise getattr(builtins, result)(message)
    return result


def _error_kind(err: BaseException) -> str:
    """The name of the built-in exception class the other ranks raise for rank 0's error."""
    for kind in (FileExistsError, IsADirectoryError, NotADirectoryError, FileNotFoundError, PermissionError,
                 ValueError, TypeError):
        if isinstance(err, kind):
            return kind.__name__
    return "RuntimeError"


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group init_from_env created (no-op otherwise). Call once at the end of the job."""
    global _OWNED_GROUP
    if _OWNED_GROUP and is_initialized():
        dist.destroy_process_group()
    _OWNED_GROUP = False
