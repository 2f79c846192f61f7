// Rotary position embedding on the GPU, HF rotate-half layout (kernels/cpu/rope.h): for the pair
// (x[i], x[i + D/2]), angle = position * inv_freq[i] in f32, inv_freq[i] = theta^(-2i/D) computed
// on the host exactly as the CPU kernel does (HF's f32 steps):
//   x'[i] = x[i] cos - x[i + D/2] sin,   x'[i + D/2] = x[i + D/2] cos + x[i] sin.
// x: [T, H, D] (f32 or bf16) rotated in place; positions: [T] int32 on the device. The backward
// applies the inverse rotation to the gradient in place.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/array.h"

namespace zn::cuda {

void rope_forward(long tokens, int n_heads, int head_dim, float theta, const int32_t* positions,
                  Array x, cudaStream_t stream);
void rope_backward(long tokens, int n_heads, int head_dim, float theta, const int32_t* positions,
                   Array dx, cudaStream_t stream);

}  // namespace zn::cuda
