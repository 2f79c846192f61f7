// RMSNorm on the GPU, the math of kernels/cpu/rmsnorm.h: y = weight * (x * rsqrt(mean(x^2) + eps)),
// f32 arithmetic whatever the storage. x, y, dy, dx: [rows, dim]; weight: [dim]; rstd: [rows] f32,
// saved by the forward for the backward. dx (same dtype as x) is overwritten; dweight (f32) is
// accumulated into (+=), or null: not computed (a frozen weight). Device pointers, asynchronous on `stream`.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/cuda/array.h"

namespace zn::cuda {

void rmsnorm_forward(long rows, long dim, float eps, ConstArray x, ConstArray weight, Array y,
                     float* rstd, cudaStream_t stream);

void rmsnorm_backward(long rows, long dim, ConstArray x, ConstArray weight, const float* rstd,
                      ConstArray dy, Array dx, float* dweight, cudaStream_t stream);

}  // namespace zn::cuda
