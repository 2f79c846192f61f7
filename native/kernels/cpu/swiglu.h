// SwiGLU activation of Mistral's MLP: out = silu(gate) * up, silu(x) = x * sigmoid(x).
// All arrays have n elements; out, dgate and dup are overwritten. Element i of every input is
// read before element i of any output is written, so outputs may overwrite inputs (a model's
// backward turns its saved gate/up into dgate/dup in place).
#pragma once

#include "core/cpu_features.h"

namespace zn::cpu {

void swiglu_forward(long n, const float* gate, const float* up, float* out);
void swiglu_backward(long n, const float* gate, const float* up, const float* dout, float* dgate,
                     float* dup);

// The same on a given SIMD path instead of cpu_path() (tests compare paths).
void swiglu_forward(long n, const float* gate, const float* up, float* out, CpuPath path);
void swiglu_backward(long n, const float* gate, const float* up, const float* dout, float* dgate,
                     float* dup, CpuPath path);

}  // namespace zn::cpu
