// Rotary position embedding, HF rotate-half layout: for pair (x[i], x[i + D/2]) with
// inv_freq[i] = theta^(-2i/D) and angle = position * inv_freq[i] (computed in f32 as HF does):
//   x'[i] = x[i] cos - x[i + D/2] sin,   x'[i + D/2] = x[i + D/2] cos + x[i] sin.
// x: [T, H, D], rotated in place; positions: [T] (restart at each packed document).
// The backward is the inverse rotation (angle -> -angle) applied to the gradient in place.
#pragma once
#include <cstdint>

namespace zn::cpu {

void rope_forward(long tokens, int n_heads, int head_dim, float theta, const int32_t* positions,
                  float* x);
void rope_backward(long tokens, int n_heads, int head_dim, float theta, const int32_t* positions,
                   float* dx);

}  // namespace zn::cpu
