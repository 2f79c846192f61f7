// AdamW, one fused pass per element in torch's _single_tensor_adam order (f32 throughout):
//   g = grad * scale;  p = p * (1 - lr wd);  m = lerp(m, g, 1 - b1)  (torch: one FMA)
//   v = fma((1 - b2) * g, g, v * b2);  d = sqrt(v) / sqrt(1 - b2^t) + eps
//   p = p + (-(lr / (1 - b1^t)) * m) / d;  optional bf16 copy of p.
// Scalar coefficients are formed in f64 and rounded to f32, as torch turns Python floats
// into f32 scalars. The two FMAs are where torch 2.13's AVX2 kernels (lerp_, addcmul_) fuse.
// Checked by hand against torch.optim.AdamW (foreach and single-tensor, several steps): the
// moments are bit-identical; the weights differ only through torch's f32 sqrt, which is
// within 1 ulp but not correctly rounded (~17% of values); fed torch's sqrt, every bit agrees.
#include "kernels/cpu/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/errors.h"
#include "core/simd_math.h"
#include "core/thread_pool.h"

namespace zn::cpu {

namespace {

struct Coefficients {
  float decay_factor;  // 1 - lr wd
  float lerp_coeff;    // torch's lerp of weight 1 - b1: weight if < 0.5, else weight - 1
  bool lerp_from_start;
  float beta2;
  float one_minus_beta2;
  float bias_correction2_sqrt;
  float eps;
  float neg_step_size;  // -lr / (1 - b1^t)
  float grad_scale;
};

Coefficients coefficients(const AdamWStep& hp) {
  Coefficients c;
  c.decay_factor = float(1 - hp.lr * hp.weight_decay);
  const float lerp_weight = float(1 - hp.beta1);
  c.lerp_from_start = std::fabs(lerp_weight) < 0.5f;
  c.lerp_coeff = c.lerp_from_start ? lerp_weight : lerp_weight - 1.0f;
  c.beta2 = float(hp.beta2);
  c.one_minus_beta2 = float(1 - hp.beta2);
  const double t = double(hp.step);
  c.bias_correction2_sqrt = float(std::pow(1 - std::pow(hp.beta2, t), 0.5));
  c.eps = float(hp.eps);
  c.neg_step_size = float(-(hp.lr / (1 - std::pow(hp.beta1, t))));
  c.grad_scale = hp.grad_scale;
  return c;
}

// One statement per torch tensor op, so each intermediate is rounded to f32 where torch's is.
// Plain scalar code on purpose: the portable x86-64 target has no FMA, so the compiler cannot
// fuse a * b + c where torch rounds twice, and the FMAs torch does use are std::fma, exact
// everywhere (but a libm call per element there, which is why AVX2 machines take the vector
// loop below).
// Without weight decay the factor is exactly 1, so that multiply changes nothing.
void update_range(const Coefficients& c, size_t begin, size_t end, float* param,
                  const float* grad, float* m, float* v, bf16* param_bf16) {
  for (size_t i = begin; i < end; ++i) {
    const float g = grad[i] * c.grad_scale;
    const float p = param[i] * c.decay_factor;
    // torch's vectorised lerp: fmadd(coeff, end - start, weight < 0.5 ? start : end).
    const float m_old = m[i];
    const float diff = g - m_old;
    const float mi = std::fma(c.lerp_coeff, diff, c.lerp_from_start ? m_old : g);
    const float v_decayed = v[i] * c.beta2;
    const float g_scaled = c.one_minus_beta2 * g;
    // addcmul: torch's AVX2 build fuses self + (value * t1) * t2 into one FMA.
    const float vi = std::fma(g_scaled, g, v_decayed);
    const float root = std::sqrt(vi);
    const float corrected = root / c.bias_correction2_sqrt;
    const float denom = corrected + c.eps;
    const float numerator = c.neg_step_size * mi;
    const float delta = numerator / denom;
    const float p_new = p + delta;
    m[i] = mi;
    v[i] = vi;
    param[i] = p_new;
    if (param_bf16) param_bf16[i] = f32_to_bf16(p_new);
  }
}

#if defined(__x86_64__)

// update_range eight lanes at a time: the same operations in the same order (IEEE mul, sub,
// div and sqrt are correctly rounded in every lane as in scalar code, and the two FMAs are the
// ones std::fma computes), so the bits are update_range's. The tail runs through update_range.
ZN_TARGET_AVX2 void update_range_avx2(const Coefficients& c, size_t begin, size_t end, float* param,
                                      const float* grad, float* m, float* v, bf16* param_bf16) {
  const __m256 grad_scale = _mm256_set1_ps(c.grad_scale), decay = _mm256_set1_ps(c.decay_factor);
  const __m256 lerp_coeff = _mm256_set1_ps(c.lerp_coeff), beta2 = _mm256_set1_ps(c.beta2);
  const __m256 one_minus_beta2 = _mm256_set1_ps(c.one_minus_beta2);
  const __m256 correction2 = _mm256_set1_ps(c.bias_correction2_sqrt), eps = _mm256_set1_ps(c.eps);
  const __m256 neg_step_size = _mm256_set1_ps(c.neg_step_size);
  size_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256 g = _mm256_mul_ps(_mm256_loadu_ps(grad + i), grad_scale);
    const __m256 p = _mm256_mul_ps(_mm256_loadu_ps(param + i), decay);
    const __m256 m_old = _mm256_loadu_ps(m + i);
    const __m256 mi = _mm256_fmadd_ps(lerp_coeff, _mm256_sub_ps(g, m_old), c.lerp_from_start ? m_old : g);
    const __m256 v_decayed = _mm256_mul_ps(_mm256_loadu_ps(v + i), beta2);
    const __m256 vi = _mm256_fmadd_ps(_mm256_mul_ps(one_minus_beta2, g), g, v_decayed);
    const __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), correction2), eps);
    const __m256 p_new = _mm256_add_ps(p, _mm256_div_ps(_mm256_mul_ps(neg_step_size, mi), denom));
    _mm256_storeu_ps(m + i, mi);
    _mm256_storeu_ps(v + i, vi);
    _mm256_storeu_ps(param + i, p_new);
    if (param_bf16) _mm_storeu_si128(reinterpret_cast<__m128i*>(param_bf16 + i), simd::to_bf16_avx2(p_new));
  }
  update_range(c, i, end, param, grad, m, v, param_bf16);
}

#define ZN_TARGET_AVX512 __attribute__((target("avx512f")))

// GCC 12's unmasked AVX-512 intrinsics start from _mm512_undefined_*(), which
// -Wmaybe-uninitialized reports once inlined (GCC bug 105593, as in gemm.cpp).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// f32_to_bf16 on 16 lanes (nearest even, NaN quieted with its sign and top payload bits kept),
// packed to 16 bf16 values. Integer rounding, not vcvtneps2bf16, which flushes denormals.
ZN_TARGET_AVX512 inline __m256i to_bf16_avx512(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __m512i quiet_nan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  const __mmask16 is_nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded, quiet_nan));
}

// update_range sixteen lanes at a time, the same operations in the same order as the AVX2
// loop (so the same bits). Memory-bound on a 2-core Zen 5 (zn_bench adamw:N). Non-temporal
// stores of the bf16 copy (no read for ownership of its lines) did not pay there: 11.1 GB/s
// against 11.9 with plain stores, medians of 8 alternating rounds over 32M parameters.
ZN_TARGET_AVX512 void update_range_avx512(const Coefficients& c, size_t begin, size_t end, float* param,
                                          const float* grad, float* m, float* v, bf16* param_bf16) {
  size_t i = begin;
  const __m512 grad_scale = _mm512_set1_ps(c.grad_scale), decay = _mm512_set1_ps(c.decay_factor);
  const __m512 lerp_coeff = _mm512_set1_ps(c.lerp_coeff), beta2 = _mm512_set1_ps(c.beta2);
  const __m512 one_minus_beta2 = _mm512_set1_ps(c.one_minus_beta2);
  const __m512 correction2 = _mm512_set1_ps(c.bias_correction2_sqrt), eps = _mm512_set1_ps(c.eps);
  const __m512 neg_step_size = _mm512_set1_ps(c.neg_step_size);
  for (; i + 16 <= end; i += 16) {
    const __m512 g = _mm512_mul_ps(_mm512_loadu_ps(grad + i), grad_scale);
    const __m512 p = _mm512_mul_ps(_mm512_loadu_ps(param + i), decay);
    const __m512 m_old = _mm512_loadu_ps(m + i);
    const __m512 mi = _mm512_fmadd_ps(lerp_coeff, _mm512_sub_ps(g, m_old), c.lerp_from_start ? m_old : g);
    const __m512 v_decayed = _mm512_mul_ps(_mm512_loadu_ps(v + i), beta2);
    const __m512 vi = _mm512_fmadd_ps(_mm512_mul_ps(one_minus_beta2, g), g, v_decayed);
    const __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vi), correction2), eps);
    const __m512 p_new = _mm512_add_ps(p, _mm512_div_ps(_mm512_mul_ps(neg_step_size, mi), denom));
    _mm512_storeu_ps(m + i, mi);
    _mm512_storeu_ps(v + i, vi);
    _mm512_storeu_ps(param + i, p_new);
    if (param_bf16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(param_bf16 + i), to_bf16_avx512(p_new));
  }
  update_range(c, i, end, param, grad, m, v, param_bf16);
}

#pragma GCC diagnostic pop

#endif

constexpr size_t kSquaresBlock = 1 << 16;

double block_sum_of_squares(const float* x, size_t count) {
  // Eight independent f64 lanes: a fixed order that the compiler can still vectorise.
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= count; i += 8)
    for (int k = 0; k < 8; ++k) lanes[k] += double(x[i + k]) * double(x[i + k]);
  for (; i < count; ++i) lanes[0] += double(x[i]) * double(x[i]);
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

}  // namespace

void adamw_update(long n, const AdamWStep& hp, float* param, const float* grad, float* m, float* v,
                  bf16* param_bf16) {
  adamw_update(n, hp, param, grad, m, v, param_bf16, cpu_path());
}

void adamw_update(long n, const AdamWStep& hp, float* param, const float* grad, float* m, float* v,
                  bf16* param_bf16, CpuPath path) {
  ZN_CHECK(n >= 0, "adamw_update: negative size ", n);
  ZN_CHECK(hp.step >= 1, "adamw_update: step must start at 1, got ", hp.step);
  ZN_CHECK(hp.beta1 >= 0 && hp.beta1 < 1 && hp.beta2 >= 0 && hp.beta2 < 1,
           "adamw_update: betas must lie in [0, 1), got ", hp.beta1, ", ", hp.beta2);
  ZN_CHECK(path != CpuPath::Avx2 || (cpu_features().avx2 && cpu_features().fma),
           "adamw_update: this CPU cannot run the avx2 path");
  ZN_CHECK(path != CpuPath::Avx512Bf16 || cpu_features().avx512f, "adamw_update: this CPU cannot run the avx512 path");
  const Coefficients c = coefficients(hp);
  auto range = update_range;
#if defined(__x86_64__)
  if (path == CpuPath::Avx2) range = update_range_avx2;
  if (path == CpuPath::Avx512Bf16) range = update_range_avx512;
#else
  (void)path;
#endif
  parallel_for(size_t(n), size_t(1) << 15, [&](size_t begin, size_t end) {
    range(c, begin, end, param, grad, m, v, param_bf16);
  });
}

double sum_of_squares(long n, const float* grad) {
  ZN_CHECK(n >= 0, "sum_of_squares: negative size ", n);
  const size_t blocks = (size_t(n) + kSquaresBlock - 1) / kSquaresBlock;
  std::vector<double> partial(blocks);
  parallel_for(blocks, 1, [&](size_t begin, size_t end) {
    for (size_t b = begin; b < end; ++b) {
      const size_t first = b * kSquaresBlock;
      partial[b] = block_sum_of_squares(grad + first, std::min(kSquaresBlock, size_t(n) - first));
    }
  });
  double total = 0;
  for (double s : partial) total += s;
  return total;
}

}  // namespace zn::cpu
