// Counter-based Gaussian noise for msrs: Philox4x32-10 + Box-Muller in fp32.
//
// The scheme (mirrored in msrs/ops/philox.py, the plain-torch reference, and kernels/philox.py; change all
// three together):
//   key     k = (seed mod 2^32, (seed >> 32) mod 2^32)
//   counter c = (g, sample, image, stream), each a uint32:
//             g      = element / 4, element = flat index inside one C*H*W sample
//             sample = the sample's index within its image
//             image  = the image's global index in the data set (not its position in a batch)
//             stream = what the samples are for (selection / estimation, cascade stage)
//   (w0, w1, w2, w3) = Philox4x32-10(c, k)            Random123's rounds and constants
//   u_i = ((w_i >> 8) + 0.5) * 2^-24                  exact in fp32, strictly inside (0, 1)
//   Box-Muller in fp32:  r01 = sqrt(-2 ln u0), t01 = u1 * 6.2831854820251465f (fp32 2 pi, one rounded product)
//                        z0 = r01 cos t01, z1 = r01 sin t01; z2, z3 likewise from (u2, u3)
//   element e gets z_(e mod 4) of group g = e / 4.
//
// The uint32 words match the reference bit for bit. ln, sin and cos are computed here by branch-free Cephes-style
// polynomials (about 1-2 fp32 ulps, so the normals agree with the reference's to ~1e-6 absolute) so that the
// compiler can vectorise them; every other step is the same sequence of correctly rounded fp32 operations as the
// reference (the build uses -ffp-contract=off, so no fused multiply-adds change the rounding). The scalar and the
// vectorised code paths therefore give bitwise identical noise, whatever the batch, block or thread split.
#pragma once

#include <cstdint>
#include <cstring>

namespace msrs {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kPhiloxRounds = 10;
constexpr float kTwoPiF32 = 6.2831854820251465f;    // float32(2 pi)
constexpr float kUniformScale = 5.9604644775390625e-08f;  // 2^-24

// Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1); Random123's definition.
// Known answer: counter = key = 0 -> 0x6627e8d5 0xe169c58d 0xbc57ac4c 0x9b00dbd8.
static inline __attribute__((always_inline)) void philox4x32_10(
    uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
    uint32_t& w0, uint32_t& w1, uint32_t& w2, uint32_t& w3) {
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const uint64_t p0 = static_cast<uint64_t>(kPhiloxM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kPhiloxM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  w0 = c0;
  w1 = c1;
  w2 = c2;
  w3 = c3;
}

// u = ((w >> 8) + 0.5) * 2^-24, exact in fp32, in [2^-25, 1 - 2^-25].
static inline __attribute__((always_inline)) float uniform_open01(uint32_t w) {
  return (static_cast<float>(static_cast<int32_t>(w >> 8)) + 0.5f) * kUniformScale;
}

static inline __attribute__((always_inline)) uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

static inline __attribute__((always_inline)) float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Natural log for positive, normal, finite fp32 x (Cephes logf, branch-free; ~1 ulp).
static inline __attribute__((always_inline)) float log_positive(float x) {
  const uint32_t bits = float_bits(x);
  int32_t e = static_cast<int32_t>(bits >> 23) - 126;  // x = m * 2^e, m in [0.5, 1)
  float m = bits_float((bits & 0x007fffffu) | 0x3f000000u);
  const bool below = m < 0.707106781186547524f;
  e = below ? e - 1 : e;
  m = below ? (m + m) - 1.0f : m - 1.0f;
  const float fe = static_cast<float>(e);
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y = y + -2.12194440e-4f * fe;
  y = y + -0.5f * z;
  float r = m + y;
  r = r + 0.693359375f * fe;
  return r;
}

// sin and cos of x in [0, 2 pi] (Cephes sinf/cosf reduction and polynomials, branch-free; ~1e-7 absolute).
static inline __attribute__((always_inline)) void sincos_0_2pi(float x, float& s, float& c) {
  int32_t j = static_cast<int32_t>(x * 1.27323954473516f);  // 4 / pi; x >= 0 so truncation is floor
  j = (j + 1) & ~1;                                          // even octant: x = j pi/4 + r, |r| <= pi/4
  const float y = static_cast<float>(j);
  float r = x - y * 0.78515625f;
  r = r - y * 2.4187564849853515625e-4f;
  r = r - y * 3.77489497744594108e-8f;
  const float z = r * r;
  float pc = 2.443315711809948e-5f;
  pc = pc * z - 1.388731625493765e-3f;
  pc = pc * z + 4.166664568298827e-2f;
  pc = pc * z * z;
  pc = pc - 0.5f * z;
  pc = pc + 1.0f;
  float ps = -1.9515295891e-4f;
  ps = ps * z + 8.3321608736e-3f;
  ps = ps * z - 1.6666654611e-1f;
  ps = ps * z * r;
  ps = ps + r;
  const int32_t q = (j >> 1) & 3;  // quadrant
  const bool swap = (q & 1) != 0;
  const float sin_mag = swap ? pc : ps;
  const float cos_mag = swap ? ps : pc;
  s = (q >= 2) ? -sin_mag : sin_mag;
  c = (q == 1 || q == 2) ? -cos_mag : cos_mag;
}

// Standard normals from Philox words: w[j][i] is word j of group i (i < n); writes z[0 .. 4n) in element order.
// Straight loops over small arrays, so the compiler vectorises each stage for whatever ISA the caller targets.
constexpr int kMaxGroups = 128;  // a multiple of 16, so SIMD Philox code may fill whole vectors past n

static inline __attribute__((always_inline)) void words_to_normals(const uint32_t (*w)[kMaxGroups], int n,
                                                                   float* __restrict z) {
  alignas(64) float radius[2][kMaxGroups];
  alignas(64) float angle[2][kMaxGroups];
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < n; ++i) {
      const float u_r = uniform_open01(w[2 * h][i]);
      const float u_t = uniform_open01(w[2 * h + 1][i]);
      radius[h][i] = __builtin_sqrtf(-2.0f * log_positive(u_r));
      angle[h][i] = u_t * kTwoPiF32;
    }
  }
  for (int i = 0; i < n; ++i) {
    float s0, c0, s1, c1;
    sincos_0_2pi(angle[0][i], s0, c0);
    sincos_0_2pi(angle[1][i], s1, c1);
    z[4 * i + 0] = radius[0][i] * c0;
    z[4 * i + 1] = radius[0][i] * s0;
    z[4 * i + 2] = radius[1][i] * c1;
    z[4 * i + 3] = radius[1][i] * s1;
  }
}

// Standard normals of the n <= kMaxGroups consecutive Philox groups g0 .. g0 + n - 1 for counter words
// (c1, c2, c3) = (sample, image, stream) and key (k0, k1), in element order: z[0 .. 4n). Portable version
// (auto-vectorised Philox); ops.cpp adds an AVX2 one with the same results bit for bit.
static inline __attribute__((always_inline)) void normals_block(
    uint32_t g0, int n, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1, float* __restrict z) {
  alignas(64) uint32_t w[4][kMaxGroups];
  for (int i = 0; i < n; ++i) {
    uint32_t a, b, c, d;
    philox4x32_10(g0 + static_cast<uint32_t>(i), c1, c2, c3, k0, k1, a, b, c, d);
    w[0][i] = a;
    w[1][i] = b;
    w[2][i] = c;
    w[3][i] = d;
  }
  words_to_normals(w, n, z);
}

}  // namespace msrs
