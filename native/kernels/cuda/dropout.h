// Inverted dropout on the GPU with the CPU kernel's counter-based masks (kernels/cpu/dropout.h):
// the same key keeps the same elements on both devices. x and y are f32 or bf16 (each its own),
// arithmetic in f32. Device pointers, asynchronous on `stream`.
//   y[r, c] = (accumulate ? y[r, c] : 0) + keep(r * cols + c) * x[r, c] / (1 - p)
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/cpu/dropout.h"
#include "kernels/cuda/array.h"

namespace zn::cuda {

void dropout_forward(long rows, long cols, const cpu::DropoutMask& mask, ConstArray x, Array y, bool accumulate,
                     cudaStream_t stream);

}  // namespace zn::cuda
