// RMSNorm as HF Mistral: y = weight * (x * rsqrt(mean(x^2) + eps)), all in f32.
// x, y, dy, dx: [rows, dim]; weight, dweight: [dim]; rstd: [rows] saved for backward.
#pragma once

namespace zn::cpu {

void rmsnorm_forward(long rows, long dim, float eps, const float* x, const float* weight, float* y,
                     float* rstd);

// y = weight * (x * rstd) with a saved rstd: the forward's y, bit for bit, for a model that
// recomputes normalised activations in backward instead of keeping them.
void rmsnorm_apply(long rows, long dim, const float* x, const float* weight, const float* rstd,
                   float* y);

// dx is overwritten; dweight is accumulated into (+=), or null: not computed (a frozen weight).
void rmsnorm_backward(long rows, long dim, const float* x, const float* weight, const float* rstd,
                      const float* dy, float* dx, float* dweight);

}  // namespace zn::cpu
