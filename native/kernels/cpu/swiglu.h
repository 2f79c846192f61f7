// SwiGLU activation of Mistral's MLP: out = silu(gate) * up, silu(x) = x * sigmoid(x).
// All arrays have n elements; dgate and dup are overwritten.
#pragma once

namespace zn::cpu {

void swiglu_forward(long n, const float* gate, const float* up, float* out);
void swiglu_backward(long n, const float* gate, const float* up, const float* dout, float* dgate,
                     float* dup);

}  // namespace zn::cpu
