// C++ CPU backend of the three fused Monte Carlo ops of msrs (the contract: msrs/ops/reference.py).
//
//   sample_noisy(x, rows, coeffs, seed, out_dtype)               op 1: clean images -> noisy (scaled) samples
//   finalize_denoised(x_t, eps, coeffs, mean, std, out_dtype)    op 2: one-step denoise + normalisation
//   count_votes_(counts, scores, index)                          op 3: argmax votes into int64 counts, in place
//   philox_words(counters, seed)                                 raw Philox4x32-10 words, for known-answer tests
//
// All arithmetic is fp32 (inputs of any float dtype are widened exactly, the result is rounded once to
// out_dtype), in the same order as the reference, so op 2 matches it bit for bit and op 1 matches it up to the
// rounding of ln/sin/cos (see philox.h). Work is split with at::parallel_for (torch's thread pool, so
// torch.set_num_threads applies); every split gives the same results.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "philox.h"

namespace msrs {
namespace {

// Work below these sizes runs on the calling thread: an OpenMP region costs microseconds when the machine is idle
// and up to a scheduler time slice when it is oversubscribed, so each thread must get ~50-100 us of work.
constexpr int64_t kNoiseGrainElements = 65536;      // sample_noisy: ~1.5 ns per element
constexpr int64_t kFinalizeGrainElements = 131072;  // finalize_denoised: memory bound
constexpr int64_t kVoteGrainElements = 262144;      // count_votes_: ~0.2 ns per logit

template <typename T>
inline float to_float(T v) {
  return static_cast<float>(v);
}

template <typename T>
inline T from_float(float v) {
  return static_cast<T>(v);  // c10::Half / c10::BFloat16 round to nearest even, like Tensor.to()
}

#define MSRS_DISPATCH_IN(TYPE, NAME, ...)                                                        \
  [&] {                                                                                          \
    switch (TYPE) {                                                                              \
      case at::kFloat: { using in_t = float; return __VA_ARGS__(); }                             \
      case at::kHalf: { using in_t = at::Half; return __VA_ARGS__(); }                           \
      case at::kBFloat16: { using in_t = at::BFloat16; return __VA_ARGS__(); }                   \
      case at::kDouble: { using in_t = double; return __VA_ARGS__(); }                           \
      default: TORCH_CHECK(false, NAME ": expected a floating-point tensor, got ", TYPE);        \
    }                                                                                            \
  }()

#define MSRS_DISPATCH_OUT(TYPE, ...)                                                             \
  [&] {                                                                                          \
    switch (TYPE) {                                                                              \
      case at::kFloat: { using out_t = float; return __VA_ARGS__(); }                            \
      case at::kHalf: { using out_t = at::Half; return __VA_ARGS__(); }                          \
      case at::kBFloat16: { using out_t = at::BFloat16; return __VA_ARGS__(); }                  \
      default: TORCH_CHECK(false, "out_dtype: expected float32, float16 or bfloat16, got ", TYPE); \
    }                                                                                            \
  }()

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, ": the cpp backend expects CPU tensors, got one on ", t.device());
}

// ---------------------------------------------------------------------------------------------------------------
// op 1: sample_noisy

// Groups of 4 elements per block: the block's normals live in a small stack buffer, never in a tensor.
constexpr int kBlockGroups = kMaxGroups;
constexpr int kBlockElements = 4 * kBlockGroups;

// The noise kernel, one non-inlined copy per ISA, shared by every dtype combination. The AVX2 copy computes
// Philox with intrinsics (8 groups per vector) and lets the compiler vectorise the rest for AVX2; it performs the
// same IEEE fp32 operations as the portable copy (no FMA), so both give identical noise. Chosen once at load time
// from the CPU's features: the .so itself needs only the baseline ISA.
using NormalsFn = void (*)(uint32_t, int, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, float*);

__attribute__((noinline)) void normals_portable(uint32_t g0, int n, uint32_t c1, uint32_t c2, uint32_t c3,
                                                uint32_t k0, uint32_t k1, float* __restrict z) {
  normals_block(g0, n, c1, c2, c3, k0, k1, z);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MSRS_HAVE_AVX2_KERNEL 1

// (hi, lo) 32-bit words of the 64-bit products a * m for 8 lanes.
__attribute__((target("avx2"), always_inline)) inline void mulhilo_avx2(__m256i a, __m256i m, __m256i& hi,
                                                                         __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, m);                        // lanes 0, 2, 4, 6 (64-bit)
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

__attribute__((target("avx2"), noinline)) void normals_avx2(uint32_t g0, int n, uint32_t c1, uint32_t c2,
                                                             uint32_t c3, uint32_t k0, uint32_t k1,
                                                             float* __restrict z) {
  alignas(64) uint32_t w[4][kMaxGroups];
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  // 16 groups per iteration as two independent 8-lane chains: one chain alone is bound by the rounds' latency.
  for (int i = 0; i < n; i += 16) {  // kMaxGroups is a multiple of 16: the last vectors may run past n
    __m256i a0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(g0 + static_cast<uint32_t>(i))), lanes);
    __m256i b0 = _mm256_add_epi32(a0, _mm256_set1_epi32(8));
    __m256i a1 = _mm256_set1_epi32(static_cast<int>(c1)), b1 = a1;
    __m256i a2 = _mm256_set1_epi32(static_cast<int>(c2)), b2 = a2;
    __m256i a3 = _mm256_set1_epi32(static_cast<int>(c3)), b3 = a3;
    uint32_t key0 = k0, key1 = k1;
    for (int round = 0; round < kPhiloxRounds; ++round) {
      if (round) {
        key0 += kPhiloxW0;
        key1 += kPhiloxW1;
      }
      const __m256i kv0 = _mm256_set1_epi32(static_cast<int>(key0));
      const __m256i kv1 = _mm256_set1_epi32(static_cast<int>(key1));
      __m256i ahi0, alo0, ahi1, alo1, bhi0, blo0, bhi1, blo1;
      mulhilo_avx2(a0, m0, ahi0, alo0);
      mulhilo_avx2(a2, m1, ahi1, alo1);
      mulhilo_avx2(b0, m0, bhi0, blo0);
      mulhilo_avx2(b2, m1, bhi1, blo1);
      a0 = _mm256_xor_si256(_mm256_xor_si256(ahi1, a1), kv0);
      a1 = alo1;
      a2 = _mm256_xor_si256(_mm256_xor_si256(ahi0, a3), kv1);
      a3 = alo0;
      b0 = _mm256_xor_si256(_mm256_xor_si256(bhi1, b1), kv0);
      b1 = blo1;
      b2 = _mm256_xor_si256(_mm256_xor_si256(bhi0, b3), kv1);
      b3 = blo0;
    }
    const __m256i words[2][4] = {{a0, a1, a2, a3}, {b0, b1, b2, b3}};
    for (int half = 0; half < 2; ++half) {
      for (int j = 0; j < 4; ++j) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(&w[j][i + 8 * half]), words[half][j]);
      }
    }
  }
  words_to_normals(w, n, z);
}
#endif

NormalsFn pick_normals() {
#ifdef MSRS_HAVE_AVX2_KERNEL
  if (__builtin_cpu_supports("avx2")) return normals_avx2;
#endif
  return normals_portable;
}

NormalsFn g_normals = pick_normals();

// Which noise kernel runs: "avx2" or "portable". Passing a name switches to it (tests compare the two).
std::string simd_kernel(const std::string& name) {
  if (name == "portable") {
    g_normals = normals_portable;
  } else if (name == "avx2") {
#ifdef MSRS_HAVE_AVX2_KERNEL
    TORCH_CHECK(__builtin_cpu_supports("avx2"), "simd_kernel: this CPU has no AVX2");
    g_normals = normals_avx2;
#else
    TORCH_CHECK(false, "simd_kernel: built without the AVX2 kernel");
#endif
  } else if (name == "best") {
    g_normals = pick_normals();
  } else {
    TORCH_CHECK(name.empty(), "simd_kernel: expected '', 'best', 'portable' or 'avx2', got '", name, "'");
  }
#ifdef MSRS_HAVE_AVX2_KERNEL
  if (g_normals == normals_avx2) return "avx2";
#endif
  return "portable";
}

template <typename in_t, typename out_t>
void sample_noisy_kernel(const in_t* __restrict x, const int64_t* __restrict rows, const float* __restrict coeffs,
                         out_t* __restrict out, int64_t num_rows, int64_t numel, uint64_t seed) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  const int64_t groups = (numel + 3) / 4;
  const int64_t blocks = (groups + kBlockGroups - 1) / kBlockGroups;
  const int64_t grain = std::max<int64_t>(1, kNoiseGrainElements / kBlockElements);
  at::parallel_for(0, num_rows * blocks, grain, [&](int64_t begin, int64_t end) {
    alignas(64) float z[kBlockElements];
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t r = unit / blocks, b = unit % blocks;
      const int64_t* row = rows + 4 * r;
      const float sigma = coeffs[3 * r], alpha = coeffs[3 * r + 1], beta = coeffs[3 * r + 2];
      const int64_t g0 = b * kBlockGroups;
      const int n = static_cast<int>(std::min<int64_t>(kBlockGroups, groups - g0));
      g_normals(static_cast<uint32_t>(g0), n, static_cast<uint32_t>(row[2]), static_cast<uint32_t>(row[1]),
                static_cast<uint32_t>(row[3]), k0, k1, z);
      const int64_t e0 = 4 * g0;
      const int64_t count = std::min<int64_t>(4 * static_cast<int64_t>(n), numel - e0);
      const in_t* __restrict src = x + row[0] * numel + e0;
      out_t* __restrict dst = out + r * numel + e0;
      for (int64_t e = 0; e < count; ++e) {
        dst[e] = from_float<out_t>(alpha * (to_float(src[e]) + sigma * z[e]) + beta);
      }
    }
  });
}

at::Tensor sample_noisy(const at::Tensor& x, const at::Tensor& rows, const at::Tensor& coeffs, int64_t seed,
                        at::ScalarType out_dtype) {
  check_cpu(x, "x");
  check_cpu(rows, "rows");
  check_cpu(coeffs, "coeffs");
  TORCH_CHECK(x.dim() == 4, "x: expected a 4-d tensor [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(rows.dim() == 2 && rows.size(1) == 4, "rows: expected shape [R, 4], got ", rows.sizes());
  TORCH_CHECK(rows.scalar_type() == at::kLong, "rows: expected an int64 tensor, got ", rows.scalar_type());
  TORCH_CHECK(coeffs.dim() == 2 && coeffs.size(0) == rows.size(0) && coeffs.size(1) == 3,
              "coeffs: expected shape [R, 3], got ", coeffs.sizes());
  TORCH_CHECK(seed >= 0, "seed: expected an int >= 0, got ", seed);
  const at::Tensor xc = x.contiguous();  // the one copy a non-contiguous x costs
  const at::Tensor rc = rows.contiguous();
  const at::Tensor cc = coeffs.to(at::kFloat).contiguous();
  const int64_t num_rows = rc.size(0), batch = xc.size(0);
  const int64_t numel = xc.size(1) * xc.size(2) * xc.size(3);
  TORCH_CHECK(numel / 4 < (int64_t(1) << 32), "x: one image must have fewer than 2^34 elements");
  const int64_t* rp = rc.data_ptr<int64_t>();
  for (int64_t r = 0; r < num_rows; ++r) {
    TORCH_CHECK(rp[4 * r] >= 0 && rp[4 * r] < batch, "rows: source index (column 0) ", rp[4 * r],
                " out of range [0, ", batch, ") at row ", r);
  }
  at::Tensor out = at::empty({num_rows, xc.size(1), xc.size(2), xc.size(3)}, xc.options().dtype(out_dtype));
  if (num_rows == 0 || numel == 0) return out;
  MSRS_DISPATCH_IN(xc.scalar_type(), "x", [&] {
    MSRS_DISPATCH_OUT(out_dtype, [&] {
      sample_noisy_kernel<in_t, out_t>(xc.data_ptr<in_t>(), rp, cc.data_ptr<float>(), out.data_ptr<out_t>(),
                                       num_rows, numel, static_cast<uint64_t>(seed));
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// op 2: finalize_denoised

template <typename in_t, typename out_t>
void finalize_kernel(const in_t* __restrict xt, const in_t* __restrict eps, const float* __restrict coeffs,
                     const float* __restrict mean, const float* __restrict stdv, out_t* __restrict out, int64_t rows,
                     int64_t channels, int64_t plane) {
  const int64_t grain = std::max<int64_t>(1, kFinalizeGrainElements / std::max<int64_t>(plane, 1));
  at::parallel_for(0, rows * channels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / channels, c = p % channels;
      const float sqrt_abar = coeffs[2 * n], sqrt_one_minus = coeffs[2 * n + 1];
      const float mu = mean[c], sd = stdv[c];
      const in_t* __restrict a = xt + p * plane;
      const in_t* __restrict e = eps + p * plane;
      out_t* __restrict o = out + p * plane;
      for (int64_t i = 0; i < plane; ++i) {
        float x0 = (to_float(a[i]) - sqrt_one_minus * to_float(e[i])) / sqrt_abar;
        x0 = x0 < -1.0f ? -1.0f : x0;  // NaN falls through both tests and propagates, like torch.clamp
        x0 = x0 > 1.0f ? 1.0f : x0;
        o[i] = from_float<out_t>(((x0 + 1.0f) / 2.0f - mu) / sd);
      }
    }
  });
}

at::Tensor finalize_denoised(const at::Tensor& x_t, const at::Tensor& eps, const at::Tensor& coeffs,
                             const at::Tensor& mean, const at::Tensor& std, at::ScalarType out_dtype) {
  check_cpu(x_t, "x_t");
  check_cpu(eps, "eps");
  check_cpu(coeffs, "coeffs");
  check_cpu(mean, "mean");
  check_cpu(std, "std");
  TORCH_CHECK(x_t.dim() == 4, "x_t: expected a 4-d tensor [N, C, H, W], got ", x_t.sizes());
  TORCH_CHECK(eps.sizes() == x_t.sizes(), "eps: expected the shape of x_t ", x_t.sizes(), ", got ", eps.sizes());
  const int64_t rows = x_t.size(0), channels = x_t.size(1), plane = x_t.size(2) * x_t.size(3);
  TORCH_CHECK(coeffs.dim() == 2 && coeffs.size(0) == rows && coeffs.size(1) == 2,
              "coeffs: expected shape [N, 2], got ", coeffs.sizes());
  TORCH_CHECK(mean.numel() == channels, "mean: expected ", channels, " values (one per channel), got ", mean.numel());
  TORCH_CHECK(std.numel() == channels, "std: expected ", channels, " values (one per channel), got ", std.numel());
  at::Tensor a = x_t, e = eps;
  if (a.scalar_type() != e.scalar_type()) {  // mixed storage: widen both (exact), one instantiation per dtype
    a = a.to(at::kFloat);
    e = e.to(at::kFloat);
  }
  a = a.contiguous();
  e = e.contiguous();
  const at::Tensor cc = coeffs.to(at::kFloat).contiguous();
  const at::Tensor mc = mean.to(at::kFloat).contiguous(), sc = std.to(at::kFloat).contiguous();
  at::Tensor out = at::empty(a.sizes(), a.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  MSRS_DISPATCH_IN(a.scalar_type(), "x_t", [&] {
    MSRS_DISPATCH_OUT(out_dtype, [&] {
      finalize_kernel<in_t, out_t>(a.data_ptr<in_t>(), e.data_ptr<in_t>(), cc.data_ptr<float>(),
                                   mc.data_ptr<float>(), sc.data_ptr<float>(), out.data_ptr<out_t>(), rows, channels,
                                   plane);
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// op 3: count_votes_

// torch.argmax's rule: the first maximum wins; a NaN counts as the maximum, so the first NaN wins.

// fp32 rows: 16 interleaved lanes in four SSE-width vectors (GCC vector extensions: SSE2 on x86-64, NEON on arm64).
// Each lane keeps its first maximum and its index (lanes see increasing indices); whether a NaN was seen is
// tracked on the side, and only then is the row scanned again for the first NaN. The lanes' winners are merged
// with the smallest index first among equal values, then the tail (indices after every lane's) is scanned.
typedef float f32x4 __attribute__((vector_size(16)));
typedef int32_t i32x4 __attribute__((vector_size(16)));

inline int64_t argmax_f32(const float* __restrict row, int64_t K) {
  constexpr int kVecs = 4, kLanes = 4 * kVecs;
  const int64_t full = K / kLanes * kLanes;
  float m = row[0];
  int64_t result = 0;
  if (full > 0) {
    f32x4 best[kVecs];
    i32x4 arg[kVecs], idx[kVecs];
    i32x4 nan = {0, 0, 0, 0};
    for (int q = 0; q < kVecs; ++q) {
      std::memcpy(&best[q], row + 4 * q, sizeof(f32x4));
      idx[q] = i32x4{0, 1, 2, 3} + 4 * q;
      arg[q] = idx[q];
      nan |= best[q] != best[q];
    }
    for (int64_t k = kLanes; k < full; k += kLanes) {
      for (int q = 0; q < kVecs; ++q) {
        f32x4 v;
        std::memcpy(&v, row + k + 4 * q, sizeof v);
        idx[q] += kLanes;
        const i32x4 take = v > best[q];
        best[q] = take ? v : best[q];
        arg[q] = take ? idx[q] : arg[q];
        nan |= v != v;
      }
    }
    if (nan[0] | nan[1] | nan[2] | nan[3]) {
      for (int64_t k = 0; k < full; ++k) {
        if (row[k] != row[k]) return k;
      }
    }
    m = best[0][0];
    result = arg[0][0];
    for (int j = 1; j < kLanes; ++j) {
      const float v = best[j / 4][j % 4];
      const int64_t at = arg[j / 4][j % 4];
      if (v > m || (v == m && at < result)) {
        m = v;
        result = at;
      }
    }
  }
  for (int64_t k = full > 0 ? full : 1; k < K; ++k) {
    if (m != m) break;
    const float v = row[k];
    if (v > m || v != v) {
      m = v;
      result = k;
    }
  }
  return result;
}

// Few classes (K < 16, e.g. CIFAR-10): too short for the lanes above, and a compare-and-branch scan mispredicts.
// The row is loaded as four 4-float vectors with the lanes past K set to -inf; any NaN -> the first NaN, else the
// first lane equal to the maximum (lane masks + count-trailing-zeros; no data-dependent branches but the NaN one).
constexpr int64_t kSmallK = 16;

inline int64_t argmax_small_scalar(const float* __restrict row, int64_t K) {
  int64_t result = 0;
  float m = row[0];
  for (int64_t k = 1; k < K && m == m; ++k) {
    if (row[k] > m || row[k] != row[k]) {
      m = row[k];
      result = k;
    }
  }
  return result;
}

#if defined(__SSE2__)
// `padded`: 16 readable floats from row (lanes K.. are overwritten with -inf here).
inline int64_t argmax_small_sse(const float* __restrict padded, const __m128 keep[4]) {
  const __m128 ninf = _mm_set1_ps(-std::numeric_limits<float>::infinity());
  __m128 v[4];
  int nan_mask = 0;
  for (int q = 0; q < 4; ++q) {
    const __m128 x = _mm_loadu_ps(padded + 4 * q);
    v[q] = _mm_or_ps(_mm_and_ps(keep[q], x), _mm_andnot_ps(keep[q], ninf));
    nan_mask |= _mm_movemask_ps(_mm_cmpunord_ps(v[q], v[q])) << (4 * q);
  }
  if (nan_mask) return __builtin_ctz(static_cast<unsigned>(nan_mask));
  __m128 m = _mm_max_ps(_mm_max_ps(v[0], v[1]), _mm_max_ps(v[2], v[3]));
  m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(1, 0, 3, 2)));
  m = _mm_max_ps(m, _mm_shuffle_ps(m, m, _MM_SHUFFLE(2, 3, 0, 1)));
  int eq_mask = 0;
  for (int q = 0; q < 4; ++q) eq_mask |= _mm_movemask_ps(_mm_cmpeq_ps(v[q], m)) << (4 * q);
  return __builtin_ctz(static_cast<unsigned>(eq_mask));  // the first maximum (-0 == +0, like torch)
}
#endif

// Row argmaxes of S rows of any float dtype into out[0 .. S): fp16 / bf16 values are widened (exactly) to fp32;
// fp64 rows are compared as they are.
template <typename T>
void argmax_rows(const T* __restrict base, int64_t S, int64_t K, int64_t* __restrict out) {
  if constexpr (std::is_same_v<T, double>) {
    for (int64_t s = 0; s < S; ++s) {
      const double* row = base + s * K;
      int64_t result = 0;
      double m = row[0];
      for (int64_t k = 1; k < K && m == m; ++k) {
        if (row[k] > m || row[k] != row[k]) {
          m = row[k];
          result = k;
        }
      }
      out[s] = result;
    }
  } else if (K < kSmallK) {
    alignas(16) float buffer[kSmallK];
#if defined(__SSE2__)
    __m128 keep[4];
    for (int q = 0; q < 4; ++q) {
      const __m128i lane = _mm_setr_epi32(4 * q, 4 * q + 1, 4 * q + 2, 4 * q + 3);
      keep[q] = _mm_castsi128_ps(_mm_cmplt_epi32(lane, _mm_set1_epi32(static_cast<int>(K))));
    }
#endif
    for (int64_t s = 0; s < S; ++s) {
      const float* row;
      if constexpr (std::is_same_v<T, float>) {
        row = base + s * K;
        if ((s * K + kSmallK > S * K)) {  // the last rows: 16 floats would read past the tensor
          for (int64_t k = 0; k < K; ++k) buffer[k] = row[k];
          row = buffer;
        }
      } else {
        for (int64_t k = 0; k < K; ++k) buffer[k] = static_cast<float>(base[s * K + k]);
        row = buffer;
      }
#if defined(__SSE2__)
      out[s] = argmax_small_sse(row, keep);
#else
      out[s] = argmax_small_scalar(row, K);
#endif
    }
  } else {
    std::vector<float> buffer;
    for (int64_t s = 0; s < S; ++s) {
      if constexpr (std::is_same_v<T, float>) {
        out[s] = argmax_f32(base + s * K, K);
      } else {
        buffer.resize(K);
        for (int64_t k = 0; k < K; ++k) buffer[k] = static_cast<float>(base[s * K + k]);
        out[s] = argmax_f32(buffer.data(), K);
      }
    }
  }
}

[[noreturn]] __attribute__((noinline, cold)) void bad_vote(int64_t s, int64_t row, int64_t cls, int64_t M,
                                                          int64_t K) {
  TORCH_CHECK(row >= 0 && row < M, "index: expected rows in [0, ", M, "), got ", row, " at sample ", s);
  TORCH_CHECK(false, "scores: expected class ids in [0, ", K, "), got ", cls, " at sample ", s);
}

// Votes at most this many bins are summed in per-thread partial tables (then reduced); larger tables are filled
// by one thread from the precomputed flat bin of each sample. Integer sums: the result is the same either way.
constexpr int64_t kMaxPartialBins = int64_t(1) << 16;

void count_votes_(at::Tensor counts, const at::Tensor& scores, const at::Tensor& index) {
  check_cpu(counts, "counts");
  check_cpu(scores, "scores");
  check_cpu(index, "index");
  TORCH_CHECK(counts.dim() == 2, "counts: expected a 2-d tensor [M, K], got ", counts.sizes());
  TORCH_CHECK(counts.scalar_type() == at::kLong, "counts: expected an int64 tensor, got ", counts.scalar_type());
  TORCH_CHECK(counts.is_contiguous(), "counts: expected a contiguous tensor (it is updated in place)");
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == at::kLong, "index: expected an int64 tensor [S], got ",
              index.scalar_type(), " ", index.sizes());
  const int64_t M = counts.size(0), K = counts.size(1), S = index.size(0);
  TORCH_CHECK(scores.size(0) == S, "scores: expected ", S, " samples (index.shape[0]), got ", scores.size(0));
  const bool logits = scores.dim() == 2;
  if (logits) {
    TORCH_CHECK(scores.size(1) == K, "scores: expected ", K, " classes (counts.shape[1]), got ", scores.size(1));
    TORCH_CHECK(K > 0 || S == 0, "scores: cannot take the argmax over 0 classes");
  } else {
    TORCH_CHECK(scores.dim() == 1 && scores.scalar_type() == at::kLong,
                "scores: expected float logits [S, K] or int64 class ids [S], got ", scores.scalar_type(), " ",
                scores.sizes());
  }
  if (S == 0) return;
  const at::Tensor sc = scores.contiguous(), ic = index.contiguous();
  const int64_t* idx = ic.data_ptr<int64_t>();
  std::vector<int64_t> flat(S);
  int64_t* fp = flat.data();
  TORCH_CHECK(K < (int64_t(1) << 31), "scores: expected fewer than 2^31 classes");
  const int64_t grain = logits ? std::max<int64_t>(1, kVoteGrainElements / K) : kVoteGrainElements;
  // Pass 1 (parallel, read-only): each sample's bin in counts, range-checked before anything is written.
  // (The lambda copies what it reads: through a reference, every store to fp could alias M or K.)
  const auto to_bins = [idx, fp, M, K](int64_t begin, int64_t end, const int64_t* __restrict cls) {
    for (int64_t s = begin; s < end; ++s) {
      const int64_t row = idx[s], c = cls[s];
      if (__builtin_expect(static_cast<uint64_t>(row) >= static_cast<uint64_t>(M) ||
                               static_cast<uint64_t>(c) >= static_cast<uint64_t>(K),
                           0)) {
        bad_vote(s, row, c, M, K);
      }
      fp[s] = row * K + c;
    }
  };
  if (logits) {
    MSRS_DISPATCH_IN(sc.scalar_type(), "scores", [&] {
      const in_t* base = sc.data_ptr<in_t>();
      at::parallel_for(0, S, grain, [&](int64_t begin, int64_t end) {
        argmax_rows<in_t>(base + begin * K, end - begin, K, fp + begin);  // classes first, then their bins
        to_bins(begin, end, fp);
      });
    });
  } else {
    const int64_t* ids = sc.data_ptr<int64_t>();
    at::parallel_for(0, S, grain, [&](int64_t begin, int64_t end) { to_bins(begin, end, ids); });
  }
  // Pass 2: add the votes.
  int64_t* cp = counts.data_ptr<int64_t>();
  const int64_t bins_total = M * K;
  const int64_t threads = at::get_num_threads();
  if (threads > 1 && bins_total <= kMaxPartialBins && S >= 4 * bins_total && S >= 65536) {
    const int64_t chunks = threads;
    std::vector<int64_t> partial(chunks * bins_total, 0);
    const int64_t per_chunk = (S + chunks - 1) / chunks;
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        int64_t* table = partial.data() + c * bins_total;
        const int64_t s_end = std::min(S, (c + 1) * per_chunk);
        for (int64_t s = c * per_chunk; s < s_end; ++s) ++table[fp[s]];
      }
    });
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t* table = partial.data() + c * bins_total;
      for (int64_t b = 0; b < bins_total; ++b) cp[b] += table[b];
    }
  } else {
    int64_t* __restrict table = cp;
    const int64_t* __restrict bins = fp;
    for (int64_t s = 0; s < S; ++s) ++table[bins[s]];
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Raw Philox4x32-10 words for counters [N, 4] (int64 holding uint32) and a seed: int64 [N, 4]. For tests.
at::Tensor philox_words(const at::Tensor& counters, int64_t seed) {
  check_cpu(counters, "counters");
  TORCH_CHECK(counters.dim() == 2 && counters.size(1) == 4 && counters.scalar_type() == at::kLong,
              "counters: expected an int64 tensor [N, 4], got ", counters.scalar_type(), " ", counters.sizes());
  const at::Tensor cc = counters.contiguous();
  at::Tensor out = at::empty_like(cc);
  const int64_t* c = cc.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  const uint64_t key = static_cast<uint64_t>(seed);
  for (int64_t i = 0; i < cc.size(0); ++i) {
    uint32_t w[4];
    philox4x32_10(static_cast<uint32_t>(c[4 * i]), static_cast<uint32_t>(c[4 * i + 1]),
                  static_cast<uint32_t>(c[4 * i + 2]), static_cast<uint32_t>(c[4 * i + 3]),
                  static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32), w[0], w[1], w[2], w[3]);
    for (int j = 0; j < 4; ++j) o[4 * i + j] = w[j];
  }
  return out;
}

}  // namespace
}  // namespace msrs

#ifndef MSRS_SOURCE_HASH
#define MSRS_SOURCE_HASH unknown
#endif
#define MSRS_STRINGIFY2(x) #x
#define MSRS_STRINGIFY(x) MSRS_STRINGIFY2(x)

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "msrs fused Monte Carlo ops, C++ CPU backend (see msrs/ops/reference.py for the contract)";
  // "h" + the first 32 hex digits of csrc/build_flags.py's source_hash() of the sources this was built from.
  m.attr("SOURCE_HASH") = MSRS_STRINGIFY(MSRS_SOURCE_HASH);
  m.def("sample_noisy", &msrs::sample_noisy, "out[r] = alpha_r * (x[src_r] + sigma_r * eps_r) + beta_r",
        py::arg("x"), py::arg("rows"), py::arg("coeffs"), py::arg("seed"), py::arg("out_dtype"));
  m.def("finalize_denoised", &msrs::finalize_denoised,
        "((clamp((x_t - sqrt(1-abar) eps) / sqrt(abar), -1, 1) + 1) / 2 - mean) / std", py::arg("x_t"),
        py::arg("eps"), py::arg("coeffs"), py::arg("mean"), py::arg("std"), py::arg("out_dtype"));
  m.def("count_votes_", &msrs::count_votes_, "counts[index[s], argmax(scores[s])] += 1, in place",
        py::arg("counts"), py::arg("scores"), py::arg("index"));
  m.def("simd_kernel", &msrs::simd_kernel,
        "the noise kernel in use ('avx2' or 'portable'); pass a name ('best', 'portable', 'avx2') to switch",
        py::arg("name") = "");
  m.def("philox_words", &msrs::philox_words, "Philox4x32-10 words of int64 counters [N, 4] under a seed",
        py::arg("counters"), py::arg("seed"));
}
