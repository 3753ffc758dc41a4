"""finalize_denoised as one Triton kernel: one-step DDPM denoise, clamp, map to [0, 1] and normalise per channel.

  x0  = clamp((x_t - sqrt(1 - abar) * eps) / sqrt(abar), -1, 1)      per-row coeffs [N, 2] = (sqrt_abar, sqrt(1-abar))
  out = ((x0 + 1) / 2 - mean[c]) / std[c]                             per-channel mean, std [C]

Grid: (plane tiles, element tiles), a plane being one (row, channel) H*W image, so the per-row coefficients and the
per-channel statistics are loaded once per plane, not per element. fp32 math whatever the storage dtypes
(fp16 / bf16 / fp32 / fp64 in, fp16 / bf16 / fp32 out); divisions are the correctly rounded tl.div_rn and the
clamp propagates NaN, as torch's does.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from . import cast_rne, launch_config


@triton.jit
def _finalize_denoised_kernel(
    xt_ptr, eps_ptr, coeffs_ptr, mean_ptr, std_ptr, out_ptr, num_planes, channels, plane_size,
    BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr,
):
    plane = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    plane_mask = plane < num_planes
    row = plane // channels
    channel = plane % channels
    sqrt_abar = tl.load(coeffs_ptr + row.to(tl.int64) * 2 + 0, mask=plane_mask, other=1.0)
    sqrt_one_minus = tl.load(coeffs_ptr + row.to(tl.int64) * 2 + 1, mask=plane_mask, other=0.0)
    mean = tl.load(mean_ptr + channel, mask=plane_mask, other=0.0)
    std = tl.load(std_ptr + channel, mask=plane_mask, other=1.0)

    element = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask = plane_mask[:, None] & (element < plane_size)[None, :]
    offsets = plane.to(tl.int64)[:, None] * plane_size + element[None, :]
    x_t = tl.load(xt_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    eps = tl.load(eps_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    x0 = tl.div_rn(x_t - sqrt_one_minus[:, None] * eps, tl.broadcast_to(sqrt_abar[:, None], (BLOCK_P, BLOCK_E)))
    x0 = tl.clamp(x0, -1.0, 1.0, propagate_nan=tl.PropagateNan.ALL)
    out = tl.div_rn((x0 + 1.0) * 0.5 - mean[:, None], tl.broadcast_to(std[:, None], (BLOCK_P, BLOCK_E)))
    tl.store(out_ptr + offsets, cast_rne(out, out_ptr.dtype.element_ty), mask=mask)


def _tile(num_planes: int, plane_size: int, elements: int) -> tuple[int, int]:
    block_e = min(triton.next_power_of_2(plane_size), elements)
    block_p = max(1, min(triton.next_power_of_2(num_planes), elements // block_e))
    return block_p, block_e


def finalize_denoised(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    coeffs: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    out_dtype: torch.dtype,
    *,
    block_planes: Optional[int] = None,
    block_elements: Optional[int] = None,
) -> torch.Tensor:
    """Launch the kernel. x_t, eps [N, C, H, W] contiguous; coeffs [N, 2], mean [C], std [C] fp32 contiguous.
    block_planes / block_elements (powers of two) force a tile shape, for tests."""
    out = torch.empty(x_t.shape, dtype=out_dtype, device=x_t.device)
    if out.numel() == 0:
        return out
    channels = x_t.shape[1]
    num_planes = x_t.shape[0] * channels
    plane_size = out.numel() // num_planes

    def launch(block_p: int, block_e: int, num_warps: int) -> None:
        grid = (triton.cdiv(num_planes, block_p), triton.cdiv(plane_size, block_e))
        if grid[1] > 65535:
            raise ValueError(f"x_t: {plane_size} elements per channel is too many for the Triton grid")
        _finalize_denoised_kernel[grid](
            x_t, eps, coeffs, mean, std, out, num_planes, channels, plane_size,
            BLOCK_P=block_p, BLOCK_E=block_e, num_warps=num_warps, enable_fp_fusion=False,
        )

    if block_planes is not None or block_elements is not None:
        default_p, default_e = _tile(num_planes, plane_size, launch_config.elementwise_configs()[0][0])
        launch(block_planes or default_p, block_elements or default_e, 4)
        return out

    configs = [(*_tile(num_planes, plane_size, tile), warps) for tile, warps in launch_config.elementwise_configs()]
    key = ("finalize_denoised", x_t.device.index, x_t.dtype, eps.dtype, out_dtype, plane_size,
           triton.next_power_of_2(num_planes))
    launch_config.run_tuned(key, configs, launch)
    return out
