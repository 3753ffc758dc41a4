"""Philox4x32-10 and the Box-Muller mapping as Triton device functions: the noise scheme of msrs.ops.philox.

The scheme (mirrored in msrs/ops/philox.py, the plain-torch reference, and csrc/philox.h; change all three
together):
  key     k = (seed mod 2^32, (seed >> 32) mod 2^32)
  counter c = (g, sample, image, stream), each a uint32; g = element // 4 inside one C*H*W sample
  (w0, w1, w2, w3) = Philox4x32-10(c, k)           Random123's rounds and constants
  u_i = ((w_i >> 8) + 0.5) * 2^-24                 exact in fp32, strictly inside (0, 1)
  Box-Muller in fp32:  r01 = sqrt(-2 ln u0), t01 = u1 * 6.2831854820251465 (fp32 2 pi)
                       z0 = r01 cos t01, z1 = r01 sin t01; z2, z3 likewise from (u2, u3)
  element e gets z_(e mod 4) of group g = e // 4.

This is our own Philox (widening multiplies, uint32 arithmetic modulo 2^32), not tl.randn: tl.randn keys its counter
differently and uses int32 offsets, and its words would not match the torch and C++ backends. The uint32 words
here match msrs.ops.philox.philox4x32 bit for bit (tests/test_ops_triton.py checks it through
`philox_words`); the normals agree up to the rounding of log, sin and cos (a few fp32 ulps). The square root is
the correctly rounded tl.sqrt_rn, not the fast approximate tl.sqrt.
"""
import triton
import triton.language as tl

PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)  # golden ratio
PHILOX_W1 = tl.constexpr(0xBB67AE85)  # sqrt(3) - 1
PHILOX_ROUNDS = tl.constexpr(10)
TWO_PI_F32 = tl.constexpr(6.2831854820251465)  # float32(2 pi): exactly representable, so an fp32 constant
UNIFORM_SCALE = tl.constexpr(5.9604644775390625e-08)  # 2^-24


# Philox needs uint32 arithmetic modulo 2^32. It is done in uint64 and truncated: with Triton's overflow sanitizer
# on (debug builds), a plain uint32 `*` or `+` that wraps would trip an assertion, and the per-op opt-out
# (sanitize_overflow=False) is not in every Triton version; 64-bit arithmetic is never sanitised, a 32 x 32 -> 64-bit
# product cannot overflow, and compilers emit one widening multiply (mul.wide.u32) for it.
@triton.jit
def _wide_mul(a, m):
    """(high word, low word) of the 64-bit product of uint32 `a` and the 32-bit constant `m`, as uint32."""
    product = a.to(tl.uint64) * m
    return (product >> 32).to(tl.uint32), product.to(tl.uint32)


@triton.jit
def _wrapping_add(a, b):
    """uint32 a + b modulo 2^32."""
    return (a.to(tl.uint64) + b).to(tl.uint32)


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1), all uint32 (same shapes for c*; k* scalars).

    Random123's definition; known answer for counter = key = 0: 0x6627e8d5 0xe169c58d 0xbc57ac4c 0x9b00dbd8.
    """
    for round_index in tl.static_range(PHILOX_ROUNDS):
        if round_index > 0:
            k0 = _wrapping_add(k0, PHILOX_W0)
            k1 = _wrapping_add(k1, PHILOX_W1)
        hi0, lo0 = _wide_mul(c0, PHILOX_M0)
        hi1, lo1 = _wide_mul(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


@triton.jit
def uniform_open01(word):
    """((w >> 8) + 0.5) * 2^-24 in fp32 for a uint32 word: exact, in [2^-25, 1 - 2^-25]."""
    return ((word >> 8).to(tl.float32) + 0.5) * UNIFORM_SCALE


@triton.jit
def box_muller(u_radius, u_angle):
    """(r cos t, r sin t) with r = sqrt(-2 ln u_radius), t = u_angle * fp32(2 pi), all fp32."""
    radius = tl.sqrt_rn(-2.0 * tl.log(u_radius))
    angle = u_angle * TWO_PI_F32
    return radius * tl.cos(angle), radius * tl.sin(angle)


@triton.jit
def philox_normals(c0, c1, c2, c3, k0, k1):
    """Four standard normals (fp32) per counter: z0..z3 for elements 4 g + 0 .. 4 g + 3."""
    w0, w1, w2, w3 = philox4x32_10(c0, c1, c2, c3, k0, k1)
    z0, z1 = box_muller(uniform_open01(w0), uniform_open01(w1))
    z2, z3 = box_muller(uniform_open01(w2), uniform_open01(w3))
    return z0, z1, z2, z3


@triton.jit
def key_words(k0, k1):
    """The two key words as uint32 scalars. Python ints reach the kernel as int32 or uint32 by value (or int64
    when callers pass larger ints): the words are < 2^32, so a truncating cast keeps their bits."""
    return k0.to(tl.uint32), k1.to(tl.uint32)


# --- test hooks: raw words and normals for given counters, so tests compare them with msrs.ops.philox ---


@triton.jit(do_not_specialize=["k0", "k1", "n"])
def _philox_words_kernel(counters_ptr, words_ptr, normals_ptr, n, k0, k1, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    base = offs.to(tl.int64) * 4
    c0 = tl.load(counters_ptr + base + 0, mask=mask, other=0).to(tl.uint32)
    c1 = tl.load(counters_ptr + base + 1, mask=mask, other=0).to(tl.uint32)
    c2 = tl.load(counters_ptr + base + 2, mask=mask, other=0).to(tl.uint32)
    c3 = tl.load(counters_ptr + base + 3, mask=mask, other=0).to(tl.uint32)
    key0, key1 = key_words(k0, k1)
    w0, w1, w2, w3 = philox4x32_10(c0, c1, c2, c3, key0, key1)
    # int64 output: the uint32 word zero-extended, as msrs.ops.philox holds words
    tl.store(words_ptr + base + 0, w0.to(tl.int64), mask=mask)
    tl.store(words_ptr + base + 1, w1.to(tl.int64), mask=mask)
    tl.store(words_ptr + base + 2, w2.to(tl.int64), mask=mask)
    tl.store(words_ptr + base + 3, w3.to(tl.int64), mask=mask)
    z0, z1, z2, z3 = philox_normals(c0, c1, c2, c3, key0, key1)
    tl.store(normals_ptr + base + 0, z0, mask=mask)
    tl.store(normals_ptr + base + 1, z1, mask=mask)
    tl.store(normals_ptr + base + 2, z2, mask=mask)
    tl.store(normals_ptr + base + 3, z3, mask=mask)


def philox_words(counters, seed: int, block: int = 1024):
    """Test hook: (words int64 [n, 4], normals fp32 [n, 4]) for counters int64 [n, 4] (uint32 values) and `seed`.

    words[i] = Philox4x32-10(counters[i], key(seed)); normals[i] = its four Box-Muller normals.
    """
    import torch

    counters = counters.to(torch.int64).contiguous()
    n = counters.shape[0]
    words = torch.empty((n, 4), dtype=torch.int64, device=counters.device)
    normals = torch.empty((n, 4), dtype=torch.float32, device=counters.device)
    if n:
        grid = (triton.cdiv(n, block),)
        _philox_words_kernel[grid](
            counters, words, normals, n, seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, BLOCK=block,
            enable_fp_fusion=False,
        )
    return words, normals
