// SwiGLU: out = silu(g) * u with silu(g) = g s, s = sigmoid(g).
// Backward: dg = dout * u * s (1 + g (1 - s)),  du = dout * silu(g).
#include "kernels/cpu/swiglu.h"

#include <cmath>

#include "core/errors.h"
#include "core/thread_pool.h"

namespace zn::cpu {

namespace {

constexpr size_t kGrain = 16384;

// exp of a non-positive number only: no overflow for any input, no NaN at +-inf.
inline float sigmoid(float x) {
  if (x >= 0) return 1.0f / (1.0f + std::exp(-x));
  const float e = std::exp(x);
  return e / (1.0f + e);
}

}  // namespace

void swiglu_forward(long n, const float* gate, const float* up, float* out) {
  ZN_CHECK(n >= 0, "swiglu_forward: negative size ", n);
  parallel_for(size_t(n), kGrain, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
  });
}

void swiglu_backward(long n, const float* gate, const float* up, const float* dout, float* dgate,
                     float* dup) {
  ZN_CHECK(n >= 0, "swiglu_backward: negative size ", n);
  parallel_for(size_t(n), kGrain, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      // Every input read before any output is written: the outputs may overwrite the inputs.
      const float g = gate[i], u = up[i], dy = dout[i], s = sigmoid(g);
      dgate[i] = dy * u * (s * (1.0f + g * (1.0f - s)));
      dup[i] = dy * (g * s);
    }
  });
}

}  // namespace zn::cpu
