"""The fused Monte Carlo ops behind one dispatcher.

  add_noise          clean images -> noisy samples, optionally scaled to a diffusion timestep (op 1)
  sample_noisy       the same op driven by explicit rows (image, sample, stream) and coefficients
  finalize_denoised  x_t and the UNet's eps -> classifier-normalised denoised images (op 2)
  count_votes_       logits or class ids -> int64 vote counts, accumulated in place on the device (op 3)

Each call picks a backend (msrs.ops.dispatch) and runs it through its torch custom op (msrs.ops.library).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from . import library
from . import validation as v
from .dispatch import BACKENDS, BackendUnavailable, available_backends, backend_module, resolve_backend
from .philox import MASK32

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "add_noise",
    "available_backends",
    "count_votes_",
    "finalize_denoised",
    "make_rows",
    "resolve_backend",
    "sample_noisy",
]


def _run(op: str, backend: str, *args):
    """Run `op` on `backend`: through its torch custom op while torch.compile traces (so the graph holds an opaque
    msrs:: node with a fake implementation), directly in eager mode, where the custom-op dispatch would cost
    ~20 us a call, as much as counting a CIFAR batch's votes (benchmarks/ops.py)."""
    if torch.compiler.is_compiling():
        return getattr(library, op)(*args, backend)
    return getattr(backend_module(backend), op)(*args)


def _as_list(name: str, value) -> list[float]:
    values = list(value) if isinstance(value, (Sequence, torch.Tensor)) else [value]
    if not values:
        raise ValueError(f"{name}: expected at least one value")
    return [float(x) for x in values]


def make_rows(
    image_ids: torch.Tensor, sample_start, num_samples: int, stream: int = 0, source: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows [B * num_samples, 4] (source, image id, sample, stream), image-major: image b's samples
    sample_start[b] .. sample_start[b] + num_samples - 1, all in `stream`."""
    device = image_ids.device
    count = image_ids.shape[0]
    source = torch.arange(count, device=device) if source is None else source
    start = torch.as_tensor(sample_start, dtype=torch.int64, device=device).expand(count)
    offsets = torch.arange(num_samples, dtype=torch.int64, device=device)
    columns = (
        source.repeat_interleave(num_samples),
        image_ids.to(torch.int64).repeat_interleave(num_samples),
        (start[:, None] + offsets[None, :]).reshape(-1),
        torch.full((count * num_samples,), stream, dtype=torch.int64, device=device),
    )
    return torch.stack(columns, dim=1)


def sample_noisy(
    x: torch.Tensor,
    rows: torch.Tensor,
    coeffs: torch.Tensor,
    *,
    seed: int,
    out_dtype: torch.dtype | None = None,
    backend: str | None = None,
    check: bool = True,
) -> torch.Tensor:
    """out[r] = alpha_r * (x[src_r] + sigma_r * eps(seed, image_r, sample_r, stream_r)) + beta_r (see reference.py)."""
    for name, t in (("x", x), ("rows", rows), ("coeffs", coeffs)):
        v.expect_tensor(name, t)
    v.expect_rank("x", x, 4, "[B, C, H, W]")
    v.expect_float("x", x)
    v.expect_rank("rows", rows, 2, "[R, 4] (source, image id, sample, stream)")
    v.expect_int64("rows", rows)
    v.expect_rank("coeffs", coeffs, 2, "[R, 3] (sigma, alpha, beta)")
    if rows.shape[1] != 4 or coeffs.shape != (rows.shape[0], 3):
        raise ValueError(f"rows, coeffs: expected shapes [R, 4] and [R, 3], got {tuple(rows.shape)}, {tuple(coeffs.shape)}")
    v.expect_same_device(x=x, rows=rows, coeffs=coeffs)
    v.expect_int("seed", seed, 0, 2**63 - 1)
    out_dtype = x.dtype if out_dtype is None else out_dtype
    v.expect_out_dtype("out_dtype", out_dtype)
    if check:
        v.expect_in_unit_interval("x", x)
        v.expect_finite("coeffs", coeffs)
        if coeffs.numel() and float(coeffs[:, 0].min()) < 0:
            raise ValueError(f"coeffs: expected sigma (column 0) >= 0, got {float(coeffs[:, 0].min())}")
        if rows.numel():
            if int(rows[:, 0].min()) < 0 or int(rows[:, 0].max()) >= x.shape[0]:
                raise ValueError(f"rows: expected source indices (column 0) in [0, {x.shape[0]}), got out-of-range values")
            if int(rows[:, 1:].min()) < 0 or int(rows[:, 1:].max()) > MASK32:
                raise ValueError("rows: expected image ids, sample indices and streams in [0, 2^32)")
    name = resolve_backend(backend, x.device)
    coeffs = coeffs.to(torch.float32)
    return _run("sample_noisy", name, x, rows.contiguous(), coeffs.contiguous(), seed, out_dtype)


def add_noise(
    x: torch.Tensor,
    sigma,
    num_samples: int,
    *,
    seed: int,
    image_ids: torch.Tensor | None = None,
    sample_start=0,
    stream: int = 0,
    diffusion_scale=None,
    out_dtype: torch.dtype | None = None,
    backend: str | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Noisy samples [L * B * num_samples, C, H, W], ordered (sigma level, image, sample).

    sigma: one noise level or a sequence of L levels (in [0, 1] pixel units); level l uses noise stream
    `stream + l`, so levels get independent noise. diffusion_scale: None for plain smoothing (x + sigma eps), or
    a = sqrt(abar_t) per level for a diffusion model, giving a * (2 (x + sigma eps) - 1).
    image_ids: each image's global index (the noise key; default 0 .. B-1); sample_start: the first sample
    index, an int or one per image, so work can be split and resumed without repeating noise.
    """
    v.expect_tensor("x", x)
    v.expect_rank("x", x, 4, "[B, C, H, W]")
    sigmas = [v.expect_nonnegative_number("sigma", s) for s in _as_list("sigma", sigma)]
    v.expect_int("num_samples", num_samples, 0)
    v.expect_int("stream", stream, 0, MASK32 - len(sigmas) + 1)
    if diffusion_scale is None:
        alphas, betas = [1.0] * len(sigmas), [0.0] * len(sigmas)
    else:
        scales = [v.expect_positive_number("diffusion_scale", a) for a in _as_list("diffusion_scale", diffusion_scale)]
        if len(scales) != len(sigmas):
            raise ValueError(f"diffusion_scale: expected one value per sigma ({len(sigmas)}), got {len(scales)}")
        if max(scales) > 1:
            raise ValueError(f"diffusion_scale: expected sqrt(abar_t) in (0, 1], got {max(scales)}")
        alphas, betas = [2.0 * a for a in scales], [-a for a in scales]
    if image_ids is None:
        image_ids = torch.arange(x.shape[0], device=x.device)
    v.expect_tensor("image_ids", image_ids)
    if image_ids.shape != (x.shape[0],):
        raise ValueError(f"image_ids: expected shape [{x.shape[0]}] (one id per image), got {tuple(image_ids.shape)}")
    image_ids = image_ids.to(device=x.device, dtype=torch.int64)
    rows = torch.cat([make_rows(image_ids, sample_start, num_samples, stream + level) for level in range(len(sigmas))])
    per_level = x.shape[0] * num_samples
    coeffs = torch.tensor(list(zip(sigmas, alphas, betas)), dtype=torch.float32, device=x.device)
    coeffs = coeffs.repeat_interleave(per_level, dim=0)
    return sample_noisy(x, rows, coeffs, seed=seed, out_dtype=out_dtype, backend=backend, check=check)


def finalize_denoised(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    sqrt_abar,
    *,
    mean=(0.0,),
    std=(1.0,),
    out_dtype: torch.dtype | None = None,
    backend: str | None = None,
    check: bool = True,
) -> torch.Tensor:
    """One-step denoise + classifier normalisation: ((clamp((x_t - sqrt(1-abar) eps) / sqrt(abar), -1, 1) + 1) / 2
    - mean) / std, in one pass. sqrt_abar: a number or one value per row of x_t; mean/std: one value per channel
    (or one for all)."""
    for name, t in (("x_t", x_t), ("eps", eps)):
        v.expect_tensor(name, t)
        v.expect_rank(name, t, 4, "[N, C, H, W]")
        v.expect_float(name, t)
    if eps.shape != x_t.shape:
        raise ValueError(f"eps: expected the shape of x_t {tuple(x_t.shape)}, got {tuple(eps.shape)}")
    v.expect_same_device(x_t=x_t, eps=eps)
    device, rows, channels = x_t.device, x_t.shape[0], x_t.shape[1]
    a = torch.as_tensor(sqrt_abar, dtype=torch.float32, device=device).reshape(-1)
    if a.numel() == 1:
        a = a.expand(rows)
    if a.shape != (rows,):
        raise ValueError(f"sqrt_abar: expected a number or {rows} values (one per row), got {a.numel()}")
    stats = {}
    for name, value in (("mean", mean), ("std", std)):
        t = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(channels)
        if t.shape != (channels,):
            raise ValueError(f"{name}: expected one value or {channels} (one per channel), got {t.numel()}")
        stats[name] = t.contiguous()
    out_dtype = x_t.dtype if out_dtype is None else out_dtype
    v.expect_out_dtype("out_dtype", out_dtype)
    if check:
        if a.numel() and (float(a.min()) <= 0 or float(a.max()) > 1 or not bool(torch.isfinite(a).all())):
            raise ValueError("sqrt_abar: expected values in (0, 1]")
        if not bool((stats["std"] > 0).all()):
            raise ValueError("std: expected every value > 0")
    coeffs = torch.stack((a, torch.sqrt(torch.clamp(1.0 - a * a, min=0.0))), dim=1).contiguous()
    name = resolve_backend(backend, device)
    return _run("finalize_denoised", name, x_t, eps, coeffs, stats["mean"], stats["std"], out_dtype)


def count_votes_(
    counts: torch.Tensor,
    scores: torch.Tensor,
    index: torch.Tensor | None = None,
    *,
    backend: str | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Add each sample's vote to counts[index[s], class of s] in place and return counts.

    scores: logits [S, K] (the vote is the argmax; first maximum wins, NaN counts as the maximum) or class ids [S]
    (int64). index: [S] rows of counts (default: all into row 0). With check=True, class ids and indices are
    range-checked, which costs one device sync on a GPU; pass check=False in hot loops over trusted inputs.
    """
    for name, t in (("counts", counts), ("scores", scores)):
        v.expect_tensor(name, t)
    v.expect_rank("counts", counts, 2, "[M, K]")
    v.expect_int64("counts", counts)
    if not counts.is_contiguous():
        raise ValueError("counts: expected a contiguous tensor (it is updated in place)")
    if scores.dim() == 2:
        v.expect_float("scores", scores)
        if scores.shape[1] != counts.shape[1]:
            raise ValueError(f"scores: expected {counts.shape[1]} classes (counts.shape[1]), got {scores.shape[1]}")
    elif scores.dim() == 1:
        v.expect_int64("scores", scores)
    else:
        raise ValueError(f"scores: expected logits [S, K] or class ids [S], got shape {tuple(scores.shape)}")
    if index is None:
        index = torch.zeros(scores.shape[0], dtype=torch.int64, device=scores.device)
    v.expect_tensor("index", index)
    v.expect_int64("index", index)
    if index.shape != (scores.shape[0],):
        raise ValueError(f"index: expected shape [{scores.shape[0]}] (one row per sample), got {tuple(index.shape)}")
    v.expect_same_device(counts=counts, scores=scores, index=index)
    if check and index.numel():
        if int(index.min()) < 0 or int(index.max()) >= counts.shape[0]:
            raise ValueError(f"index: expected rows in [0, {counts.shape[0]}), got values outside")
        if scores.dim() == 1 and (int(scores.min()) < 0 or int(scores.max()) >= counts.shape[1]):
            raise ValueError(f"scores: expected class ids in [0, {counts.shape[1]}), got values outside")
    name = resolve_backend(backend, counts.device)
    _run("count_votes_", name, counts, scores.contiguous(), index.contiguous())
    return counts
