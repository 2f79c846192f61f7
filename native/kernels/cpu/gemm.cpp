// Baseline GEMM: correct, threaded over rows of C, no SIMD blocking yet.
#include "kernels/cpu/gemm.h"

#include <vector>

#include "core/bf16.h"
#include "core/errors.h"
#include "core/thread_pool.h"

namespace zn::cpu {

namespace {

float load(const Matrix& m, long row, long col, bool round_to_bf16) {
  const long index = row * m.ld + col;
  float x = m.dtype == DType::F32 ? static_cast<const float*>(m.data)[index]
                                  : bf16_to_f32(static_cast<const bf16*>(m.data)[index]);
  return round_to_bf16 ? bf16_to_f32(f32_to_bf16(x)) : x;
}

}  // namespace

void gemm(bool trans_a, bool trans_b, long M, long N, long K, float alpha, Matrix A, Matrix B,
          float beta, float* C, long ldc) {
  ZN_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm: negative size M=", M, " N=", N, " K=", K);
  const bool bf16_compute = A.dtype == DType::BF16 || B.dtype == DType::BF16;
  parallel_for(size_t(M), 1, [&](size_t begin, size_t end) {
    std::vector<float> a_row(size_t(K));
    for (long i = long(begin); i < long(end); ++i) {
      for (long p = 0; p < K; ++p) a_row[p] = trans_a ? load(A, p, i, bf16_compute) : load(A, i, p, bf16_compute);
      for (long j = 0; j < N; ++j) {
        float sum = 0;
        for (long p = 0; p < K; ++p) sum += a_row[p] * (trans_b ? load(B, j, p, bf16_compute) : load(B, p, j, bf16_compute));
        float& c = C[i * ldc + j];
        c = alpha * sum + (beta == 0.0f ? 0.0f : beta * c);
      }
    }
  });
}

}  // namespace zn::cpu
