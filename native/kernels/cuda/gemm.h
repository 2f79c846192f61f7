// GEMM on the GPU: C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] + beta * C, row-major, f32
// accumulation, the same contract as kernels/cpu/gemm.h (op(X) = X or Xᵀ; ld = row stride of
// the stored matrix). Linear layers: y = x·Wᵀ (trans_b), dx = dy·W, dW += dyᵀ·x (trans_a, beta 1).
// C may be f32 or bf16 (rounded once, after alpha and beta are applied in f32).
// Implementations:
//   CublasLt    bf16 x bf16 (f32 compute) or f32 x f32 (full f32, no TF32); needs ZN_HAVE_CUBLASLT.
//   TensorCore  bf16 x bf16 through mma.sync (sm_80+): the fallback where cuBLASLt is absent, and
//               a cross-check where it is present.
//   Simple      any dtypes; when either operand is bf16 both are rounded to bf16 (the CPU rule).
// Auto picks CublasLt (bf16 x bf16, or f32 x f32 -> f32), else TensorCore for bf16 x bf16 and
// Simple for the rest.
// All pointers are device pointers; the call is asynchronous on `stream`.
#pragma once
#include <cuda_runtime_api.h>

#include "core/dtype.h"

namespace zn::cuda {

struct Matrix {
  const void* data;
  DType dtype;
  long ld;  // row stride in elements of the stored (untransposed) matrix
};

struct OutMatrix {
  void* data;
  DType dtype;
  long ld;
};

enum class GemmImpl { Auto, CublasLt, TensorCore, Simple };
const char* gemm_impl_name(GemmImpl impl);

// True when this build links cuBLASLt.
bool have_cublaslt();

// The implementation Auto would use for these operand and output dtypes.
GemmImpl gemm_auto_impl(DType a, DType b, DType c);

void gemm(bool trans_a, bool trans_b, long M, long N, long K, float alpha, Matrix A, Matrix B,
          float beta, OutMatrix C, cudaStream_t stream, GemmImpl impl = GemmImpl::Auto);

}  // namespace zn::cuda
