// AdamW on the GPU, the update of kernels/cpu/adamw.h (torch.optim.AdamW: decoupled weight decay,
// bias correction), over many tensors per launch (multi-tensor: one launch per 24 tensors instead
// of one per parameter), f32 master weights and moments, optional bf16 copy refreshed in the same
// pass. The gradient scale is hp.grad_scale, or, when grad_scale is not null, the device f32 it
// points to (the clipping coefficient computed on the device, so no host round trip).
#pragma once
#include <cuda_runtime_api.h>

#include "core/bf16.h"
#include "kernels/cpu/adamw.h"

namespace zn::cuda {

using cpu::AdamWStep;

struct AdamWTensor {
  float* param;
  const float* grad;
  float* m;
  float* v;
  bf16* param_bf16;  // nullable
  long n;
};

struct GradSpan {
  const float* grad;
  long n;
};

void adamw_update(const AdamWTensor* tensors, int count, const AdamWStep& hp,
                  const float* grad_scale, cudaStream_t stream);

// *result (device f64) = sum of squares of every gradient, accumulated in f64.
void sum_of_squares(const GradSpan* grads, int count, double* result, cudaStream_t stream);

// *coefficient (device f32) = clip_coefficient(sqrt(*sum_of_squares), max_norm) (cpu/adamw.h).
void clip_coefficient(const double* sum_of_squares, double max_norm, float* coefficient,
                      cudaStream_t stream);

}  // namespace zn::cuda
