// Vector math for the AVX2 kernel paths: f32 -> bf16 rounding exactly as f32_to_bf16 (core/bf16.h)
// does it, and e^x on 8 floats, as glibc's expf does it on one, over
// the whole float range (overflow to +inf, gradual underflow to subnormals and 0, NaN in, NaN
// out), within 2 ulp of the exact value (at most 1.26 ulp measured: tests/test_simd_math.cpp).
//
//   e^x = 2^n · e^r,  n = round(x · log2 e),  r = x - n ln2 (ln2 in two parts, |r| <= ln2 / 2),
//   e^r ≈ 1 + r + r² P(r), P of degree 5 (Cephes expf's minimax coefficients),
//   2^n applied as 2^(n - n/2) · 2^(n/2): each factor is a normal float for every n in
//   [-150, 128], so results below FLT_MIN round once, to the subnormal the product is.
//
// exp_avx512 is the same arithmetic on 16 lanes: every lane gets exp_avx2's bits.
//
// Functions carry the target attribute themselves: callers are AVX2 or AVX-512 paths chosen at
// run time (cpu_path()), and the rest of a translation unit stays portable x86-64.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#define ZN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define ZN_TARGET_AVX512F __attribute__((target("avx512f")))

namespace zn::simd {

ZN_TARGET_AVX2 inline __m256 exp_avx2(__m256 x) {
  // e^89 overflows and e^-104 rounds to 0, so clamping there changes no result; the constant is
  // the first operand so that a NaN x passes through (min/max return their second operand on NaN).
  x = _mm256_max_ps(_mm256_set1_ps(-104.0f), _mm256_min_ps(_mm256_set1_ps(89.0f), x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // n · 0.693359375 is exact
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 er = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i half = _mm256_srai_epi32(ni, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 scale_a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
  const __m256 scale_b =
      _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(er, scale_a), scale_b);
}

ZN_TARGET_AVX512F inline __m512 exp_avx512(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(89.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 er = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i ni = _mm512_cvtps_epi32(n);
  const __m512i half = _mm512_srai_epi32(ni, 1);
  const __m512i bias = _mm512_set1_epi32(127);
  const __m512 scale_a = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(half, bias), 23));
  const __m512 scale_b =
      _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_sub_epi32(ni, half), bias), 23));
  return _mm512_mul_ps(_mm512_mul_ps(er, scale_a), scale_b);
}

// The sum of 8 lanes in a fixed order (halves, then pairs, then the last two): kernels that
// must give the same bits on AVX2 and AVX-512 reduce their 8-lane partial sums with it.
ZN_TARGET_AVX2 inline float horizontal_sum_avx2(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// Lanes [0, count) of a vector: the mask for loads and stores of a loop's last partial vector,
// so the tail takes the same arithmetic as the body (results do not depend on where a thread's
// share of the loop begins and ends).
ZN_TARGET_AVX2 inline __m256i first_lanes(long count) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(count)), lane);
}

// f32_to_bf16 on 8 lanes (nearest even, NaN quieted with its sign and top payload bits kept):
// the rounded values as f32, their low 16 bits zero.
ZN_TARGET_AVX2 inline __m256 round_to_bf16_avx2(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i high_half = _mm256_set1_epi32(int(0xffff0000u));
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_and_si256(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), high_half);
  const __m256i quiet_nan = _mm256_or_si256(_mm256_and_si256(u, high_half), _mm256_set1_epi32(0x400000));
  const __m256 is_nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  return _mm256_blendv_ps(_mm256_castsi256_ps(rounded), _mm256_castsi256_ps(quiet_nan), is_nan);
}

// The same, packed into eight bf16 values (their 16-bit patterns, in lane order).
ZN_TARGET_AVX2 inline __m128i to_bf16_avx2(__m256 x) {
  const __m256i high = _mm256_srli_epi32(_mm256_castps_si256(round_to_bf16_avx2(x)), 16);
  // Each lane now holds 0..0xffff, so the signed-to-unsigned saturating pack keeps it as is.
  return _mm_packus_epi32(_mm256_castsi256_si128(high), _mm256_extracti128_si256(high, 1));
}

}  // namespace zn::simd

#endif
