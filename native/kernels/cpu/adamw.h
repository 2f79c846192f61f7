// AdamW as torch.optim.AdamW (decoupled weight decay, bias correction), f32 master weights and
// moments, with an optional bf16 copy of the weights refreshed in the same pass:
//   p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// where g = grad * grad_scale (the clipping coefficient, 1 when not clipping).
// Hyperparameters are f64 because torch computes 1 - lr wd, 1 - b1, lr / (1 - b1^t) and
// sqrt(1 - b2^t) in Python floats and rounds each to f32 only where it meets a tensor; from
// float hyperparameters (0.999f != 0.999) the step-1 bias correction alone would be 1e-5 off.
#pragma once
#include <cstdint>

#include "core/bf16.h"
#include "core/cpu_features.h"

namespace zn::cpu {

struct AdamWStep {
  double lr;
  double beta1;
  double beta2;
  double eps;
  double weight_decay;
  long step;         // t, starting at 1
  float grad_scale;  // multiplies every gradient (clipping)
};

void adamw_update(long n, const AdamWStep& hp, float* param, const float* grad, float* m, float* v,
                  bf16* param_bf16 /* nullable */);
// The same on a given path instead of cpu_path(): every path gives the same bits (tests compare).
void adamw_update(long n, const AdamWStep& hp, float* param, const float* grad, float* m, float* v,
                  bf16* param_bf16, CpuPath path);

// Sum of squares of a gradient buffer, accumulated in f64 (for the global grad norm). The
// summation order depends on n only, not on the thread count.
double sum_of_squares(long n, const float* grad);

// HF/torch clip_grad_norm_: scale = max_norm / (total_norm + 1e-6), capped at 1.
inline float clip_coefficient(double total_norm, double max_norm) {
  if (max_norm <= 0) return 1.0f;
  const double coef = max_norm / (total_norm + 1e-6);
  return coef < 1.0 ? float(coef) : 1.0f;
}

}  // namespace zn::cpu
