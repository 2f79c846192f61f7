// GEMM: C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] + beta * C, row-major, f32 accumulation.
// op(X) is X or Xᵀ (trans_a / trans_b); lda/ldb/ldc are row strides of the stored matrices.
// Linear layers use: y = x·Wᵀ (trans_b), dx = dy·W, dW += dyᵀ·x (trans_a, beta = 1).
// Compute precision: f32 when both operands are f32; when either is bf16, both are rounded to
// bf16 (round-to-nearest-even) and multiplied exactly with f32 accumulation.
#pragma once
#include "core/dtype.h"

namespace zn::cpu {

struct Matrix {
  const void* data;
  DType dtype;
  long ld;  // row stride in elements of the stored (untransposed) matrix
};

void gemm(bool trans_a, bool trans_b, long M, long N, long K, float alpha, Matrix A, Matrix B,
          float beta, float* C, long ldc);

}  // namespace zn::cpu
