"""Counter-based Gaussian noise, the plain-torch reference of the scheme every backend implements.

Why counter-based: a sample's noise must be the same whatever the batch size, the order of batches, the backend,
the device or the number of workers, so that certificates are bitwise reproducible and long runs can be split
and resumed. A counter-based generator (Philox4x32-10, Salmon et al., SC 2011) computes each random word from
its coordinates alone, with no state carried from one batch to the next.

The scheme (mirrored in csrc/philox.h and kernels/philox.py; change all three together):
  key     k = (seed mod 2^32, (seed >> 32) mod 2^32)
  counter c = (g, sample, image, stream), each a uint32:
            g      = element // 4, element = flat index inside one C*H*W sample
            sample = the sample's index within its image (0 .. n-1 for one stream)
            image  = the image's global index in the data set (not its position in a batch)
            stream = what the samples are for (e.g. selection or estimation, and the cascade stage)
  (w0, w1, w2, w3) = Philox4x32-10(c, k)           Random123's rounds and constants
  u_i = ((w_i >> 8) + 0.5) * 2^-24                 exact in fp32, strictly inside (0, 1): log never sees 0
  Box-Muller in fp32:  r01 = sqrt(-2 ln u0), t01 = 2 pi u1  ->  z0 = r01 cos t01, z1 = r01 sin t01
                       r23 = sqrt(-2 ln u2), t23 = 2 pi u3  ->  z2 = r23 cos t23, z3 = r23 sin t23
  element e gets z_(e mod 4) of group g = e // 4.
Backends agree up to the rounding of log, sqrt, sin and cos (a few fp32 ulps); the uint32 words agree exactly.
"""
from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
PHILOX_ROUNDS = 10
TWO_PI_F32 = 6.2831854820251465  # float32(2 pi), the constant the C++ and Triton code multiply by
UNIFORM_SCALE = 2.0 ** -24


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) words of the 64-bit product a * b for a uint32 constant a and uint32 values b held in int64.

    b is split into 16-bit halves so no intermediate leaves int64's range (torch has no uint64 arithmetic).
    """
    b_lo, b_hi = b & 0xFFFF, b >> 16
    p_lo, p_hi = a * b_lo, a * b_hi  # each < 2^48
    mid = ((p_hi & 0xFFFF) << 16) + p_lo  # < 2^49
    return (p_hi >> 16) + (mid >> 32), mid & MASK32


def philox4x32(c0, c1, c2, c3, seed: int):
    """Philox4x32-10 on broadcastable int64 tensors holding uint32 counters; returns four uint32 words (int64)."""
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    for round_index in range(PHILOX_ROUNDS):
        if round_index:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _uniform(word: torch.Tensor) -> torch.Tensor:
    return ((word >> 8).to(torch.float32) + 0.5) * UNIFORM_SCALE


def _box_muller(u_radius: torch.Tensor, u_angle: torch.Tensor):
    radius = torch.sqrt(-2.0 * torch.log(u_radius))
    angle = u_angle * TWO_PI_F32
    return radius * torch.cos(angle), radius * torch.sin(angle)


def gaussian_noise(
    numel: int, image: torch.Tensor, sample: torch.Tensor, stream: torch.Tensor, seed: int
) -> torch.Tensor:
    """Standard normals [R, numel] (fp32) for R rows given by int64 tensors image, sample, stream of shape [R]."""
    device = image.device
    groups = torch.arange((numel + 3) // 4, device=device, dtype=torch.int64)[None, :]
    zero = torch.zeros_like(groups)
    c1, c2, c3 = (t.to(torch.int64)[:, None] + zero for t in (sample, image, stream))
    w0, w1, w2, w3 = philox4x32(groups + torch.zeros_like(c1), c1, c2, c3, seed)
    z0, z1 = _box_muller(_uniform(w0), _uniform(w1))
    z2, z3 = _box_muller(_uniform(w2), _uniform(w3))
    return torch.stack((z0, z1, z2, z3), dim=-1).reshape(image.shape[0], -1)[:, :numel]


def check_counter_range(name: str, values: torch.Tensor) -> None:
    """Counters are uint32 words: refuse values that would silently wrap and repeat noise."""
    if values.numel() and (int(values.min()) < 0 or int(values.max()) > MASK32):
        raise ValueError(f"{name}: expected integers in [0, 2^32), got range [{int(values.min())}, {int(values.max())}]")


def _self_check() -> None:
    # Random123's published known-answer vector for philox4x32-10 with all-zero counter and key.
    words = philox4x32(*(torch.zeros(1, dtype=torch.int64) for _ in range(4)), seed=0)
    assert [hex(int(w)) for w in words] == ["0x6627e8d5", "0xe169c58d", "0xbc57ac4c", "0x9b00dbd8"], words
    assert math.isclose(TWO_PI_F32, float(torch.tensor(2 * math.pi, dtype=torch.float32)))


if __name__ == "__main__":
    _self_check()
    print("philox known-answer test passed")
