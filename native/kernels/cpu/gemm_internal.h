// GEMM on an explicitly chosen SIMD path, so tests and benchmarks can run every path the
// running CPU supports on one machine. Everything else calls zn::cpu::gemm (gemm.h), which
// takes zn::cpu_path().
#pragma once
#include "core/cpu_features.h"
#include "kernels/cpu/gemm.h"

namespace zn::cpu::detail {

// Same contract as zn::cpu::gemm; throws zn::Error when the CPU lacks `path`.
void gemm_on_path(CpuPath path, bool trans_a, bool trans_b, long M, long N, long K, float alpha,
                  Matrix A, Matrix B, float beta, float* C, long ldc);

}  // namespace zn::cpu::detail
