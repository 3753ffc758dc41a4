"""Plain-torch reference of the three fused ops. Every backend is tested against these; they are also the fallback.

The signatures here are the backend contract (csrc/ops.cpp and kernels/ implement the same three functions):

  sample_noisy(x, rows, coeffs, seed, out_dtype) -> out [R, C, H, W]
      x      [B, C, H, W] float, clean images in [0, 1]
      rows   [R, 4] int64: (source image index into x, global image id, sample index, stream)
      coeffs [R, 3] float32: (sigma, alpha, beta)
      out[r] = alpha * (x[src] + sigma * eps) + beta, eps = msrs.ops.philox noise for (image id, sample, stream)
      (alpha, beta) = (2a, -a) for a diffusion model with a = sqrt(abar_t): a * (2 (x + sigma eps) - 1);
      (1, 0) for plain Gaussian smoothing.

  finalize_denoised(x_t, eps, coeffs, mean, std, out_dtype) -> out [N, C, H, W]
      coeffs [N, 2] float32: (sqrt(abar_t), sqrt(1 - abar_t)) of each row's timestep
      x0  = clamp((x_t - sqrt(1 - abar) * eps) / sqrt(abar), -1, 1)
      out = ((x0 + 1) / 2 - mean[c]) / std[c]

  count_votes_(counts, scores, index) -> None, in place
      counts [M, K] int64; scores [S, K] float logits (argmax taken, first maximum wins, NaN counts as the
      maximum as in torch.argmax) or [S] int64 class ids; index [S] int64 row of counts each sample votes in.

All arithmetic is fp32 whatever the storage dtype; the result is rounded once to out_dtype.
"""
from __future__ import annotations

import torch

from .philox import gaussian_noise


def sample_noisy(x: torch.Tensor, rows: torch.Tensor, coeffs: torch.Tensor, seed: int, out_dtype: torch.dtype):
    src, image, sample, stream = rows.unbind(1)
    numel = x[0].numel() if x.shape[0] else 0
    eps = gaussian_noise(numel, image, sample, stream, seed)
    clean = x.to(torch.float32).reshape(x.shape[0], -1)[src]
    sigma, alpha, beta = (c[:, None] for c in coeffs.to(torch.float32).unbind(1))
    out = alpha * (clean + sigma * eps) + beta
    return out.reshape(rows.shape[0], *x.shape[1:]).to(out_dtype)


def finalize_denoised(x_t, eps, coeffs, mean, std, out_dtype: torch.dtype):
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    sqrt_abar, sqrt_one_minus = (c.reshape(shape) for c in coeffs.to(torch.float32).unbind(1))
    x0 = (x_t.to(torch.float32) - sqrt_one_minus * eps.to(torch.float32)) / sqrt_abar
    x0 = x0.clamp(-1.0, 1.0)
    channel = (1, -1) + (1,) * (x_t.dim() - 2)
    out = ((x0 + 1.0) / 2.0 - mean.to(torch.float32).reshape(channel)) / std.to(torch.float32).reshape(channel)
    return out.to(out_dtype)


def count_votes_(counts: torch.Tensor, scores: torch.Tensor, index: torch.Tensor) -> None:
    classes = scores.argmax(dim=1) if scores.dim() == 2 else scores
    flat = index.to(torch.int64) * counts.shape[1] + classes.to(torch.int64)
    counts.view(-1).index_add_(0, flat, torch.ones_like(flat))
