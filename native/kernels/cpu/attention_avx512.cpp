// The attention's tile kernels on 512-bit vectors (contract: attention_internal.h), for CPUs on
// the avx512bf16 path (cpu_path()). The operands are f32, so the products are zmm FMAs:
//   matmul:  a 6 × 64 register tile of C, 24 zmm accumulators (the AVX2 tile is 6 × 16 in 12
//            ymm), fed by 4 zmm loads of B and 6 broadcasts of A per step along K;
//   softmax, probabilities, score gradients: the AVX2 loops, 16 lanes at a time.
// Same bits as the AVX2 kernels, by construction:
//   - every output of a matmul is one chain of FMAs, one per k in k order, starting from 0 or
//     from C, whatever the register tile (tiles only change which outputs run side by side);
//   - exp is simd::exp_avx512, exp_avx2's arithmetic lane for lane (tests/test_simd_math.cpp);
//   - a softmax row sum adds the two 8-lane halves of each 16 scores into an 8-lane sum, the
//     order in which the AVX2 kernel adds them, then reduces it as the AVX2 kernel does;
//   - the maximum is exact in any order; the running row sum is one explicit FMA in both;
//     dS = P∘(dP - delta) is the same two roundings.
// So a machine's path changes speed, never results (checked bit for bit by test_attention.cpp),
// and training resumes to the same bits on AVX2 and AVX-512 machines alike.
// vdpbf16ps is not used: it multiplies bf16 operands, and the attention's are f32 activations
// in both model precisions; rounding them to bf16 would change the numerics, not just the speed.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

// The AVX-512 intrinsics' headers set off -Wmaybe-uninitialized once inlined (GCC bug 105593,
// fixed in 12.3 and 13; as in gemm.cpp).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "core/simd_math.h"
#include "kernels/cpu/attention_internal.h"

namespace zn::cpu::attention_detail {

#if defined(__x86_64__)

namespace {

#define ZN_AVX512 __attribute__((target("avx512f,avx2,fma")))

constexpr int kTileRows = 6;    // rows of C per register tile
constexpr int kTilePanels = 4;  // kLanes-wide panels of C per register tile

// A register tile of C: R rows × Panels·16 columns, each row's panels in Panels accumulators.
template <int R, int Panels, bool kTransposedA>
ZN_AVX512 inline void matmul_tile(long K, const float* a, long lda, const float* b, long ldb,
                                  long panel, float* c, long ldc, bool accumulate) {
  __m512 acc[R][Panels];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int p = 0; p < Panels; ++p) {
      acc[r][p] = accumulate ? _mm512_loadu_ps(c + r * ldc + p * kLanes) : _mm512_setzero_ps();
    }
  }
  for (long k = 0; k < K; ++k) {
    __m512 bk[Panels];
#pragma GCC unroll 4
    for (int p = 0; p < Panels; ++p) bk[p] = _mm512_loadu_ps(b + p * panel + k * ldb);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(kTransposedA ? a[k * lda + r] : a[r * lda + k]);
#pragma GCC unroll 4
      for (int p = 0; p < Panels; ++p) acc[r][p] = _mm512_fmadd_ps(x, bk[p], acc[r][p]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int p = 0; p < Panels; ++p) _mm512_storeu_ps(c + r * ldc + p * kLanes, acc[r][p]);
  }
}

// All M rows of C against Panels panels of B, kTileRows rows at a time.
template <int Panels, bool kTransposedA>
ZN_AVX512 void matmul_panels(long M, long K, MatA a, const float* b, MatB layout, float* c,
                             long ldc, bool accumulate) {
  for (long m = 0; m < M; m += kTileRows) {
    const float* am = kTransposedA ? a.data + m : a.data + m * a.ld;
    float* cm = c + m * ldc;
    const long ld = a.ld, ldb = layout.ld, panel = layout.panel;
    switch (std::min(long(kTileRows), M - m)) {
      case 6: matmul_tile<6, Panels, kTransposedA>(K, am, ld, b, ldb, panel, cm, ldc, accumulate); break;
      case 5: matmul_tile<5, Panels, kTransposedA>(K, am, ld, b, ldb, panel, cm, ldc, accumulate); break;
      case 4: matmul_tile<4, Panels, kTransposedA>(K, am, ld, b, ldb, panel, cm, ldc, accumulate); break;
      case 3: matmul_tile<3, Panels, kTransposedA>(K, am, ld, b, ldb, panel, cm, ldc, accumulate); break;
      case 2: matmul_tile<2, Panels, kTransposedA>(K, am, ld, b, ldb, panel, cm, ldc, accumulate); break;
      default: matmul_tile<1, Panels, kTransposedA>(K, am, ld, b, ldb, panel, cm, ldc, accumulate);
    }
  }
}

template <bool kTransposedA>
ZN_AVX512 void matmul_impl(long M, long N, long K, MatA a, MatB b, float* c, long ldc,
                           bool accumulate) {
  for (long n = 0; n < N; n += kTilePanels * kLanes) {
    const float* bn = b.data + n / kLanes * b.panel;
    float* cn = c + n;
    switch (std::min(long(kTilePanels), (N - n) / kLanes)) {
      case 4: matmul_panels<4, kTransposedA>(M, K, a, bn, b, cn, ldc, accumulate); break;
      case 3: matmul_panels<3, kTransposedA>(M, K, a, bn, b, cn, ldc, accumulate); break;
      case 2: matmul_panels<2, kTransposedA>(M, K, a, bn, b, cn, ldc, accumulate); break;
      default: matmul_panels<1, kTransposedA>(M, K, a, bn, b, cn, ldc, accumulate);
    }
  }
}

ZN_AVX512 void matmul(long M, long N, long K, MatA a, MatB b, float* c, long ldc,
                      bool accumulate) {
  if (a.transposed) {
    matmul_impl<true>(M, N, K, a, b, c, ldc, accumulate);
  } else {
    matmul_impl<false>(M, N, K, a, b, c, ldc, accumulate);
  }
}

// exp(x - shift), exactly 0 where x is -inf (a masked score).
ZN_AVX512 inline __m512 masked_exp(__m512 x, __m512 shift) {
  const __mmask16 visible = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kNegInf), _CMP_NEQ_OQ);
  return _mm512_maskz_mov_ps(visible, simd::exp_avx512(_mm512_sub_ps(x, shift)));
}

ZN_AVX512 void softmax(float* scores, long rows, long width, float* row_max, float* row_sum,
                       float* rescale) {
  for (long r = 0; r < rows; ++r) {
    float* s = scores + r * kKeyTile;
    __m512 vmax = _mm512_set1_ps(row_max[r]);
    for (long c = 0; c < width; c += kLanes) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + c));
    const float m = _mm512_reduce_max_ps(vmax);
    if (m == kNegInf) {  // nothing visible yet: keep the state, contribute nothing
      std::fill(s, s + width, 0.0f);
      rescale[r] = 1.0f;
      continue;
    }
    const __m512 shift = _mm512_set1_ps(m);
    __m256 sum = _mm256_setzero_ps();
    for (long c = 0; c < width; c += kLanes) {
      const __m512 p = masked_exp(_mm512_loadu_ps(s + c), shift);
      _mm512_storeu_ps(s + c, p);
      sum = _mm256_add_ps(sum, _mm512_castps512_ps256(p));
      sum = _mm256_add_ps(sum, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(p), 1)));
    }
    rescale[r] = std::exp(row_max[r] - m);
    row_sum[r] = std::fma(row_sum[r], rescale[r], simd::horizontal_sum_avx2(sum));  // as AVX2 does
    row_max[r] = m;
  }
}

ZN_AVX512 void probabilities(float* scores, long rows, long width, const float* lse) {
  for (long r = 0; r < rows; ++r) {
    float* s = scores + r * kKeyTile;
    const __m512 shift = _mm512_set1_ps(lse[r]);
    for (long c = 0; c < width; c += kLanes) {
      _mm512_storeu_ps(s + c, masked_exp(_mm512_loadu_ps(s + c), shift));
    }
  }
}

ZN_AVX512 void score_grad(const float* probs, float* dprobs, long rows, long width,
                          const float* delta) {
  for (long r = 0; r < rows; ++r) {
    const float* p = probs + r * kKeyTile;
    float* dp = dprobs + r * kKeyTile;
    const __m512 d = _mm512_set1_ps(delta[r]);
    for (long c = 0; c < width; c += kLanes) {
      const __m512 g = _mm512_sub_ps(_mm512_loadu_ps(dp + c), d);
      _mm512_storeu_ps(dp + c, _mm512_mul_ps(_mm512_loadu_ps(p + c), g));
    }
  }
}

}  // namespace

Kernels avx512_kernels() { return {matmul, softmax, probabilities, score_grad}; }

#endif

}  // namespace zn::cpu::attention_detail

#pragma GCC diagnostic pop
