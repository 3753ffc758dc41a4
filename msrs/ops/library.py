"""The fused ops registered as torch custom ops (torch.library), so torch.compile traces through them.

Each op takes the resolved backend name as its last argument; its fake implementation gives output shapes and
dtypes without running anything, which is all torch.compile and meta tensors need.
"""
from __future__ import annotations

import torch

from .dispatch import backend_module


@torch.library.custom_op("msrs::sample_noisy", mutates_args=())
def sample_noisy(
    x: torch.Tensor, rows: torch.Tensor, coeffs: torch.Tensor, seed: int, out_dtype: torch.dtype, backend: str
) -> torch.Tensor:
    return backend_module(backend).sample_noisy(x, rows, coeffs, seed, out_dtype)


@sample_noisy.register_fake
def _sample_noisy_fake(x, rows, coeffs, seed, out_dtype, backend):
    return x.new_empty((rows.shape[0], *x.shape[1:]), dtype=out_dtype)


@torch.library.custom_op("msrs::finalize_denoised", mutates_args=())
def finalize_denoised(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    coeffs: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    out_dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    return backend_module(backend).finalize_denoised(x_t, eps, coeffs, mean, std, out_dtype)


@finalize_denoised.register_fake
def _finalize_denoised_fake(x_t, eps, coeffs, mean, std, out_dtype, backend):
    return x_t.new_empty(x_t.shape, dtype=out_dtype)


@torch.library.custom_op("msrs::count_votes_", mutates_args=("counts",))
def count_votes_(counts: torch.Tensor, scores: torch.Tensor, index: torch.Tensor, backend: str) -> None:
    backend_module(backend).count_votes_(counts, scores, index)


@count_votes_.register_fake
def _count_votes_fake(counts, scores, index, backend):
    return None
