"""count_votes_ as one Triton kernel: counts[index[s], vote(s)] += 1 for every sample s, in place, no host sync.

vote(s) = argmax of the logits scores[s, :] with torch.argmax's semantics (the first maximum wins; a NaN counts
as the maximum, so the first NaN wins if there is one), or scores[s] itself when scores are int64 class ids.

The argmax is written out (running max, first index of the max, first NaN index, over chunks of BLOCK_K classes)
rather than taken from tl.argmax: the interpreter's tl.argmax ignores NaN (numpy nanargmax) and the compiled one
need not match torch on NaN. Comparisons are in fp32 (fp16 and bf16 logits widen exactly); fp64 logits are
compared in fp64, so no ties appear that torch would not see.

Aggregation before the atomics. The engine's samples are image-major (each image's samples are consecutive rows of
the batch) and most of an image's samples vote for the same class, so one atomic per sample would make thousands
of atomics queue on the same counts[row, class] address. Each program therefore groups its BLOCK_S samples by
(row, class), in the order of each group's first sample, and adds each group's size with one atomic; after
MAX_GROUPS groups (16: an engine program holds one or two images and a few classes) the remaining samples get one
atomic each, which bounds the work of a program whatever the indices. Integer sums, so the result is
bit-identical to one atomic per sample (and to the reference). atomic_count() gives the number of atomics a launch
issues, from the launch grid; COUNT_ATOMICS=True makes the kernel count them itself (tests, benchmarks/ops.py).

Loops over runtime bounds are while loops, not range(): Triton 3.6's interpreter converts a runtime scalar to an
int through a one-element array, which NumPy >= 2.4 refuses (fixed in later Triton); compiled, the two are alike.

ATOMICS: under TRITON_INTERPRET=1 programs run one after another, so the CPU tests cannot show a race; that many
programs adding to the same count at once on a GPU gives exact totals must be checked on a GPU (tests/test_ops.py
and tests/test_ops_triton.py do so on CUDA tensors, with many samples voting into the same few counts).
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from . import INTERPRET, launch_config

_NO_INDEX = tl.constexpr(1 << 30)  # larger than any class index (K < 2^30)
_NEG_INF = tl.constexpr(float("-inf"))
MAX_BLOCK_CLASSES = 256  # class chunk of the argmax: wide rows loop over chunks, so BLOCK_S stays >= 16
MIN_SAMPLES_PER_PROGRAM = 16  # what a class chunk leaves of the tile
MAX_GROUPS = 16  # (row, class) groups per program added with one atomic each; the samples of further groups: one each


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def _minimum(a, b):
    return tl.minimum(a, b)


@triton.jit
def _plus(a, b):
    return a + b


# Reductions go through tl.reduce with the combine functions above (public API; on a GPU they compile to what
# tl.max / tl.min / tl.sum compile to). In the interpreter, and only there, Triton's own combine functions are used
# when this Triton has them: the interpreter recognises them and reduces with numpy, instead of calling a Python
# combine element by element (~1 ms each). (tl.max / tl.sum themselves cannot be used: they are @jit helpers that
# refuse to run in the interpreter when triton was imported before TRITON_INTERPRET=1 was set, which diffusers
# makes the common case in a test session.) Guarded: a Triton without them gets the slow, equal result.
_MAX_COMBINE, _MIN_COMBINE, _SUM_COMBINE = _maximum, _minimum, _plus
if INTERPRET:
    _MAX_COMBINE = getattr(tl.standard, "_elementwise_max", _maximum)
    _MIN_COMBINE = getattr(tl.standard, "_elementwise_min", _minimum)
    _SUM_COMBINE = getattr(tl.standard, "_sum_combine", _plus)


@triton.jit
def _add_aggregated(counts_ptr, stats_ptr, row, vote, sample_mask, num_classes, BLOCK_S: tl.constexpr,
                    MAX_GROUPS: tl.constexpr, COUNT_ATOMICS: tl.constexpr):
    """counts[row[s], vote[s]] += 1 for the masked samples: the program's samples are grouped by (row, class) in
    the order of their first sample, each of the first MAX_GROUPS groups added with one atomic, the samples of any
    further group with one atomic each."""
    lane = tl.arange(0, BLOCK_S)
    pending = sample_mask
    groups = 0
    leader = tl.reduce(tl.where(pending, lane, BLOCK_S), 0, _MIN_COMBINE)  # the first sample not yet counted
    while (leader < BLOCK_S) & (groups < MAX_GROUPS):
        is_leader = lane == leader
        group_row = tl.reduce(tl.where(is_leader, row, 0), 0, _SUM_COMBINE)
        group_vote = tl.reduce(tl.where(is_leader, vote, 0), 0, _SUM_COMBINE)
        group = pending & (row == group_row) & (vote == group_vote)
        size = tl.reduce(group.to(tl.int64), 0, _SUM_COMBINE)
        # a scalar atomic: issued once per program (Triton predicates it to one thread)
        tl.atomic_add(counts_ptr + group_row * num_classes + group_vote, size, sem="relaxed")
        pending = pending & ~group
        groups += 1
        leader = tl.reduce(tl.where(pending, lane, BLOCK_S), 0, _MIN_COMBINE)
    one = tl.full((BLOCK_S,), 1, tl.int64)
    tl.atomic_add(counts_ptr + row * num_classes + vote, one, mask=pending, sem="relaxed")
    if COUNT_ATOMICS:
        tl.atomic_add(stats_ptr, groups + tl.reduce(pending.to(tl.int64), 0, _SUM_COMBINE))


@triton.jit
def _count_votes_kernel(
    counts_ptr, scores_ptr, index_ptr, stats_ptr, num_samples, num_classes, score_stride,
    CLASS_IDS: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr,
    AGGREGATE: tl.constexpr, MAX_GROUPS: tl.constexpr, COUNT_ATOMICS: tl.constexpr,
):
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    sample_mask = s < num_samples
    s64 = s.to(tl.int64)
    if CLASS_IDS:
        vote = tl.load(scores_ptr + s64, mask=sample_mask, other=0).to(tl.int32)
    else:
        # torch.argmax: running (max, first index of the max, first NaN index) over chunks of BLOCK_K classes
        best = tl.full((BLOCK_S,), _NEG_INF, COMPUTE_DTYPE)
        best_index = tl.full((BLOCK_S,), 0, tl.int32)
        nan_index = tl.full((BLOCK_S,), _NO_INDEX, tl.int32)
        start = 0
        while start < num_classes:  # not range(num_classes): see the module docstring
            k = start + tl.arange(0, BLOCK_K)
            class_mask = (k < num_classes)[None, :]
            values = tl.load(
                scores_ptr + s64[:, None] * score_stride + k[None, :],
                mask=sample_mask[:, None] & class_mask, other=_NEG_INF,
            ).to(COMPUTE_DTYPE)
            is_nan = (values != values) & class_mask
            chunk_nan = tl.reduce(tl.where(is_nan, k[None, :], _NO_INDEX), 1, _MIN_COMBINE)
            nan_index = tl.minimum(nan_index, chunk_nan)
            values = tl.where(is_nan | ~class_mask, _NEG_INF, values)  # NaN-free from here on
            chunk_max = tl.reduce(values, 1, _MAX_COMBINE)
            first = (values == chunk_max[:, None]) & class_mask
            chunk_index = tl.reduce(tl.where(first, k[None, :], _NO_INDEX), 1, _MIN_COMBINE)
            better = chunk_max > best  # strictly: an equal maximum in a later chunk does not win
            best = tl.where(better, chunk_max, best)
            best_index = tl.where(better, chunk_index, best_index)
            start += BLOCK_K
        # all -inf: best stays -inf and best_index 0, as torch.argmax gives
        vote = tl.where(nan_index < _NO_INDEX, nan_index, best_index)
    row = tl.load(index_ptr + s64, mask=sample_mask, other=0)
    if AGGREGATE:
        _add_aggregated(counts_ptr, stats_ptr, row, vote, sample_mask, num_classes, BLOCK_S, MAX_GROUPS,
                        COUNT_ATOMICS)
    else:  # one atomic per sample: the kernel before aggregation, kept for benchmarks/ops.py's comparison
        one = tl.full((BLOCK_S,), 1, tl.int64)
        tl.atomic_add(counts_ptr + row * num_classes + vote, one, mask=sample_mask, sem="relaxed")
        if COUNT_ATOMICS:
            tl.atomic_add(stats_ptr, tl.reduce(sample_mask.to(tl.int64), 0, _SUM_COMBINE))


def launch_shape(num_samples: int, num_classes: int, class_ids: bool, *, block_samples: Optional[int] = None,
                 block_classes: Optional[int] = None) -> tuple[int, int, int]:
    """(BLOCK_S samples per program, BLOCK_K classes per argmax chunk, programs) of a launch."""
    block_k = 1 if class_ids else block_classes or min(triton.next_power_of_2(num_classes), MAX_BLOCK_CLASSES)
    per_program = max(MIN_SAMPLES_PER_PROGRAM, launch_config.votes_tile() // max(block_k, MIN_SAMPLES_PER_PROGRAM))
    block_s = block_samples or max(1, min(triton.next_power_of_2(max(num_samples, 1)), per_program))
    return block_s, block_k, triton.cdiv(num_samples, block_s)


def atomic_count(votes: torch.Tensor, index: torch.Tensor, block_samples: int, aggregate: bool = True,
                 max_groups: int = MAX_GROUPS) -> int:
    """Atomics a launch issues, from its grid, in plain torch: one per sample without aggregation; else, per
    program (samples s // block_samples), one per (row, class) group among the first `max_groups` groups in the
    order of their first sample, and one per sample of any later group. votes, index: [S] int64 (votes = argmax)."""
    samples = votes.numel()
    if not aggregate or samples == 0:
        return int(samples)
    program = torch.arange(samples) // block_samples
    keys = torch.stack((program, index.cpu().to(torch.int64), votes.cpu().to(torch.int64)), dim=1)
    unique, group = torch.unique(keys, dim=0, return_inverse=True)
    first = torch.full((unique.shape[0],), samples, dtype=torch.int64).scatter_reduce(
        0, group, torch.arange(samples), "amin")
    order = torch.argsort(unique[:, 0] * samples + first)  # groups by program, then by their first sample
    rank = torch.empty_like(order)
    group_program = unique[order, 0]
    starts = torch.searchsorted(group_program, group_program)  # first group of the same program (sorted)
    rank[order] = torch.arange(order.numel()) - starts
    aggregated = rank < max_groups
    return int(aggregated.sum()) + int((~aggregated[group]).sum())


def count_votes_(
    counts: torch.Tensor,
    scores: torch.Tensor,
    index: torch.Tensor,
    *,
    block_samples: Optional[int] = None,
    block_classes: Optional[int] = None,
    aggregate: bool = True,
    atomics: Optional[torch.Tensor] = None,
) -> None:
    """Launch the kernel. counts [M, K] int64 contiguous; scores [S, K] float (rows contiguous) or [S] int64;
    index [S] int64. block_samples / block_classes (powers of two) force a tile shape, for tests.
    aggregate=False: one atomic per sample (the kernel before aggregation, for comparisons). atomics: an int64
    tensor [1] on counts' device; when given, the kernel adds the number of atomics it issued to it."""
    num_samples, num_classes = scores.shape[0], counts.shape[1]
    if num_samples == 0:
        return
    class_ids = scores.dim() == 1
    if class_ids:
        stride, dtype = 1, tl.int64
    else:
        if scores.stride(1) != 1:
            scores = scores.contiguous()
        stride = scores.stride(0)
        dtype = tl.float64 if scores.dtype == torch.float64 else tl.float32
    block_s, block_k, programs = launch_shape(num_samples, num_classes, class_ids, block_samples=block_samples,
                                              block_classes=block_classes)
    count_atomics = atomics is not None
    if count_atomics and (atomics.dtype != torch.int64 or atomics.device != counts.device or atomics.numel() != 1):
        raise ValueError("atomics: expected an int64 tensor [1] on the device of counts")
    _count_votes_kernel[(programs,)](
        counts, scores, index, atomics if count_atomics else counts, num_samples, num_classes, stride,
        CLASS_IDS=class_ids, COMPUTE_DTYPE=dtype, BLOCK_S=block_s, BLOCK_K=block_k,
        AGGREGATE=aggregate, MAX_GROUPS=MAX_GROUPS, COUNT_ATOMICS=count_atomics,
        num_warps=4, enable_fp_fusion=False,
    )
