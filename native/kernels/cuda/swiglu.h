// SwiGLU on the GPU (kernels/cpu/swiglu.h): out = silu(gate) * up, silu(x) = x * sigmoid(x), f32
// arithmetic. All arrays hold n elements of one dtype (f32 or bf16); dgate and dup are
// overwritten. Device pointers, asynchronous on `stream`.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/cuda/array.h"

namespace zn::cuda {

void swiglu_forward(long n, ConstArray gate, ConstArray up, Array out, cudaStream_t stream);
void swiglu_backward(long n, ConstArray gate, ConstArray up, ConstArray dout, Array dgate,
                     Array dup, cudaStream_t stream);

}  // namespace zn::cuda
