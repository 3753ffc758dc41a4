"""sample_noisy as one Triton kernel:

  out[r] = alpha_r * (x[src_r] + sigma_r * eps(seed, image_r, sample_r, stream_r)) + beta_r

Grid: (row tiles, element tiles). One program handles a tile of BLOCK_R rows x BLOCK_G Philox groups x 4 lanes,
so small images (8x8, 32x32) still give programs of a few thousand elements. Per program: the rows'
(src, image, sample, stream) and (sigma, alpha, beta) are loaded once; one Philox4x32-10 call per (row, group)
gives the four normals of elements 4g .. 4g+3 (all four words used); x[src] is read once and the result is
written once, in out's dtype. All arithmetic is fp32.

Philox counters are uint32 words (group index, sample, image, stream), never int32 offsets, so no counter wraps
or changes sign whatever the row or element count (ENGINEERING.md: tl.randn's int32 offsets would).
Element offsets into x and out are int64 (R * C*H*W may pass 2^31).
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from . import cast_rne, launch_config
from .philox import key_words, philox_normals


@triton.jit(do_not_specialize=["k0", "k1"])
def _sample_noisy_kernel(
    x_ptr, rows_ptr, coeffs_ptr, out_ptr, num_rows, numel, k0, k1,
    BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = r < num_rows
    r64 = r.to(tl.int64)
    src = tl.load(rows_ptr + r64 * 4 + 0, mask=row_mask, other=0)
    image = tl.load(rows_ptr + r64 * 4 + 1, mask=row_mask, other=0)
    sample = tl.load(rows_ptr + r64 * 4 + 2, mask=row_mask, other=0)
    stream = tl.load(rows_ptr + r64 * 4 + 3, mask=row_mask, other=0)
    sigma = tl.load(coeffs_ptr + r64 * 3 + 0, mask=row_mask, other=0.0)
    alpha = tl.load(coeffs_ptr + r64 * 3 + 1, mask=row_mask, other=0.0)
    beta = tl.load(coeffs_ptr + r64 * 3 + 2, mask=row_mask, other=0.0)

    g = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)  # group index inside one sample (< 2^29)
    lane = tl.arange(0, 4)
    element = g[:, None] * 4 + lane[None, :]  # [BLOCK_G, 4]
    element_mask = element < numel

    # Counters (g, sample, image, stream) as uint32 [BLOCK_R, BLOCK_G]; rows' ids are < 2^32 (checked by the API).
    c0 = tl.broadcast_to(g.to(tl.uint32)[None, :], (BLOCK_R, BLOCK_G))
    c1 = tl.broadcast_to(sample.to(tl.uint32)[:, None], (BLOCK_R, BLOCK_G))
    c2 = tl.broadcast_to(image.to(tl.uint32)[:, None], (BLOCK_R, BLOCK_G))
    c3 = tl.broadcast_to(stream.to(tl.uint32)[:, None], (BLOCK_R, BLOCK_G))
    key0, key1 = key_words(k0, k1)
    z0, z1, z2, z3 = philox_normals(c0, c1, c2, c3, key0, key1)
    lane3 = lane[None, None, :]
    z = tl.where(
        lane3 == 0, z0[:, :, None],
        tl.where(lane3 == 1, z1[:, :, None], tl.where(lane3 == 2, z2[:, :, None], z3[:, :, None])),
    )  # [BLOCK_R, BLOCK_G, 4], element order 4g + lane

    mask = row_mask[:, None, None] & element_mask[None, :, :]
    x = tl.load(x_ptr + src[:, None, None] * numel + element[None, :, :], mask=mask, other=0.0).to(tl.float32)
    out = alpha[:, None, None] * (x + sigma[:, None, None] * z) + beta[:, None, None]
    out_offsets = r64[:, None, None] * numel + element[None, :, :]
    tl.store(out_ptr + out_offsets, cast_rne(out, out_ptr.dtype.element_ty), mask=mask)


def _candidates(num_rows: int, groups: int, tile_groups: int) -> tuple[int, int]:
    block_g = min(triton.next_power_of_2(groups), tile_groups)
    block_r = max(1, min(triton.next_power_of_2(num_rows), tile_groups // block_g))
    return block_r, block_g


def sample_noisy(
    x: torch.Tensor,
    rows: torch.Tensor,
    coeffs: torch.Tensor,
    seed: int,
    out_dtype: torch.dtype,
    *,
    block_rows: Optional[int] = None,
    block_groups: Optional[int] = None,
) -> torch.Tensor:
    """Launch the kernel. x [B, C, H, W] (contiguous), rows [R, 4] int64, coeffs [R, 3] fp32 (contiguous).

    block_rows / block_groups (powers of two) force a tile shape, for tests; the noise does not depend on it.
    """
    num_rows = rows.shape[0]
    numel = x[0].numel() if x.shape[0] else 0
    out = torch.empty((num_rows, *x.shape[1:]), dtype=out_dtype, device=x.device)
    if num_rows == 0 or numel == 0:
        return out
    groups = triton.cdiv(numel, 4)
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF

    def launch(block_r: int, block_g: int, num_warps: int) -> None:
        grid = (triton.cdiv(num_rows, block_r), triton.cdiv(groups, block_g))
        if grid[1] > 65535:
            raise ValueError(f"x: {numel} elements per image is too many for the Triton grid (block {4 * block_g})")
        _sample_noisy_kernel[grid](
            x, rows, coeffs, out, num_rows, numel, k0, k1,
            BLOCK_R=block_r, BLOCK_G=block_g, num_warps=num_warps, enable_fp_fusion=False,
        )

    if block_rows is not None or block_groups is not None:
        default_r, default_g = _candidates(num_rows, groups, launch_config.tile_groups())
        launch(block_rows or default_r, block_groups or default_g, 4)
        return out

    configs = [
        (*_candidates(num_rows, groups, tile), warps)
        for tile, warps in launch_config.noise_configs()
    ]
    key = ("sample_noisy", x.device.index, x.dtype, out_dtype, numel, triton.next_power_of_2(num_rows))
    launch_config.run_tuned(key, configs, launch)
    return out
