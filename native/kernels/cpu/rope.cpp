// RoPE, HF rotate-half layout: for i < D/2, with angle a = position * inv_freq[i],
//   forward:  (x1, x2) -> (x1 cos a - x2 sin a,  x2 cos a + x1 sin a)
//   backward: the transpose of that rotation (a -> -a), applied to the gradient.
#include "kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/errors.h"
#include "core/thread_pool.h"

namespace zn::cpu {

namespace {

// HF's float32 arithmetic, step by step, so angles at large positions agree with transformers
// (an f32 angle near 4096 is only good to ~2e-4, so computing it differently shows up):
//   inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=float) / D))   all f32
//   freqs = inv_freq * position (f32), cos/sin of that f32 value.
// pow, cos and sin are evaluated in f64 and rounded once: correctly rounded f32 results, within
// an ulp of torch's vectorised f32 functions.
std::vector<float> inverse_frequencies(int head_dim, float theta) {
  std::vector<float> inv_freq(size_t(head_dim / 2));
  for (int i = 0; i < head_dim / 2; ++i) {
    const float exponent = float(2 * i) / float(head_dim);
    const float power = float(std::pow(double(theta), double(exponent)));
    inv_freq[i] = 1.0f / power;
  }
  return inv_freq;
}

void check_shape(const char* op, long tokens, int n_heads, int head_dim) {
  ZN_CHECK(tokens >= 0 && n_heads > 0, op, ": bad shape tokens=", tokens, " n_heads=", n_heads);
  ZN_CHECK(head_dim > 0 && head_dim % 2 == 0, op, ": head_dim must be positive and even, got ",
           head_dim);
}

// Rotates every head of every token by +angle (direction 1) or -angle (direction -1).
void rotate(long tokens, int n_heads, int head_dim, float theta, const int32_t* positions,
            float direction, float* x) {
  const int half = head_dim / 2;
  const std::vector<float> inv_freq = inverse_frequencies(head_dim, theta);
  const size_t grain = size_t(std::max(1L, 8192L / (long(n_heads) * head_dim)));
  parallel_for(size_t(tokens), grain, [&](size_t begin, size_t end) {
    std::vector<float> cos_a(half), sin_a(half);
    for (size_t t = begin; t < end; ++t) {
      const float position = float(positions[t]);
      for (int i = 0; i < half; ++i) {
        const float angle = position * inv_freq[i];
        cos_a[i] = float(std::cos(double(angle)));
        sin_a[i] = direction * float(std::sin(double(angle)));
      }
      for (int h = 0; h < n_heads; ++h) {
        float* x1 = x + (t * n_heads + h) * head_dim;
        float* x2 = x1 + half;
        for (int i = 0; i < half; ++i) {
          const float a = x1[i], b = x2[i];
          x1[i] = a * cos_a[i] - b * sin_a[i];
          x2[i] = b * cos_a[i] + a * sin_a[i];
        }
      }
    }
  });
}

}  // namespace

void rope_forward(long tokens, int n_heads, int head_dim, float theta, const int32_t* positions,
                  float* x) {
  check_shape("rope_forward", tokens, n_heads, head_dim);
  rotate(tokens, n_heads, head_dim, theta, positions, 1.0f, x);
}

void rope_backward(long tokens, int n_heads, int head_dim, float theta, const int32_t* positions,
                   float* dx) {
  check_shape("rope_backward", tokens, n_heads, head_dim);
  rotate(tokens, n_heads, head_dim, theta, positions, -1.0f, dx);
}

}  // namespace zn::cpu
