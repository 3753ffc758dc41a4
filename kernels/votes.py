"""count_votes_ as one Triton kernel: counts[index[s], vote(s)] += 1 for every sample s, in place, no host sync.

vote(s) = argmax of the logits scores[s, :] with torch.argmax's semantics (the first maximum wins; a NaN counts
as the maximum, so the first NaN wins if there is one), or scores[s] itself when scores are int64 class ids.

The argmax is written out (running max, first index of the max, first NaN index, over chunks of BLOCK_K classes)
rather than taken from tl.argmax: the interpreter's tl.argmax ignores NaN (numpy nanargmax) and the compiled one
need not match torch on NaN. Comparisons are in fp32 (fp16 and bf16 logits widen exactly); fp64 logits are
compared in fp64, so no ties appear that torch would not see.

The votes are added with tl.atomic_add (int64, relaxed: only the final sums matter). ATOMICS: under
TRITON_INTERPRET=1 programs run one after another, so the CPU tests cannot show a race; that many programs adding
to the same count at once on a GPU gives exact totals must be checked on a GPU (tests/test_ops_triton.py does
so on CUDA tensors, with many samples voting into the same few counts).
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from . import launch_config

_NO_INDEX = tl.constexpr(1 << 30)  # larger than any class index (K < 2^30)
_NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def _minimum(a, b):
    return tl.minimum(a, b)


# tl.max / tl.min are triton.language.standard @jit helpers: in the interpreter they refuse to run when triton was
# imported before TRITON_INTERPRET=1 was set (diffusers imports triton, so a test session often does that). Their
# combine functions, passed to tl.reduce, are what tl.max / tl.min compile to on a GPU, and the interpreter
# recognises them and reduces with numpy instead of calling them element by element. Own combines otherwise.
_MAX_COMBINE = getattr(tl.standard, "_elementwise_max", None) or _maximum
_MIN_COMBINE = getattr(tl.standard, "_elementwise_min", None) or _minimum


@triton.jit
def _count_votes_kernel(
    counts_ptr, scores_ptr, index_ptr, num_samples, num_classes, score_stride,
    CLASS_IDS: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr,
):
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    sample_mask = s < num_samples
    s64 = s.to(tl.int64)
    if CLASS_IDS:
        vote = tl.load(scores_ptr + s64, mask=sample_mask, other=0)
    else:
        # running (max, first index of the max, first NaN index) over chunks of BLOCK_K classes
        best = tl.full((BLOCK_S,), _NEG_INF, COMPUTE_DTYPE)
        best_index = tl.full((BLOCK_S,), 0, tl.int32)
        nan_index = tl.full((BLOCK_S,), _NO_INDEX, tl.int32)
        for start in range(0, num_classes, BLOCK_K):
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
        # all -inf: best stays -inf and best_index 0, as torch.argmax gives
        vote = tl.where(nan_index < _NO_INDEX, nan_index, best_index).to(tl.int64)
    row = tl.load(index_ptr + s64, mask=sample_mask, other=0)
    one = tl.full((BLOCK_S,), 1, tl.int64)
    tl.atomic_add(counts_ptr + row * num_classes + vote, one, mask=sample_mask, sem="relaxed")


def count_votes_(
    counts: torch.Tensor,
    scores: torch.Tensor,
    index: torch.Tensor,
    *,
    block_samples: Optional[int] = None,
    block_classes: Optional[int] = None,
) -> None:
    """Launch the kernel. counts [M, K] int64 contiguous; scores [S, K] float (rows contiguous) or [S] int64;
    index [S] int64. block_samples / block_classes (powers of two) force a tile shape, for tests."""
    num_samples, num_classes = scores.shape[0], counts.shape[1]
    if num_samples == 0:
        return
    class_ids = scores.dim() == 1
    if class_ids:
        block_k, stride, dtype = 1, 1, tl.int64
    else:
        if scores.stride(1) != 1:
            scores = scores.contiguous()
        block_k = block_classes or min(triton.next_power_of_2(num_classes), 1024)
        stride = scores.stride(0)
        dtype = tl.float64 if scores.dtype == torch.float64 else tl.float32
    tile = launch_config.votes_tile()
    block_s = block_samples or max(1, min(triton.next_power_of_2(num_samples), tile // block_k))
    grid = (triton.cdiv(num_samples, block_s),)
    _count_votes_kernel[grid](
        counts, scores, index, num_samples, num_classes, stride,
        CLASS_IDS=class_ids, COMPUTE_DTYPE=dtype, BLOCK_S=block_s, BLOCK_K=block_k,
        num_warps=4, enable_fp_fusion=False,
    )
