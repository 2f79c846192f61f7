// RMSNorm, HF MistralRMSNorm in f32:  r = (mean(x^2) + eps)^(-1/2),  y = w * (x * r).
// Backward, with u = w * dy:  dx = r * u - x * r^3 * mean(u * x),  dw += sum_rows dy * x * r.
#include "kernels/cpu/rmsnorm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/errors.h"
#include "core/thread_pool.h"

namespace zn::cpu {

namespace {

// Rows per parallel task, so a task touches at least ~16K elements.
size_t row_grain(long dim) { return size_t(std::max(1L, 16384 / std::max(1L, dim))); }

// The one place y is computed, so rmsnorm_apply reproduces the forward exactly.
// HF order: normalise first, then scale by the weight.
inline void scale_row(long dim, const float* x, const float* weight, float r, float* y) {
  for (long j = 0; j < dim; ++j) y[j] = weight[j] * (x[j] * r);
}

}  // namespace

void rmsnorm_forward(long rows, long dim, float eps, const float* x, const float* weight, float* y,
                     float* rstd) {
  ZN_CHECK(rows >= 0 && dim > 0, "rmsnorm_forward: bad shape rows=", rows, " dim=", dim);
  parallel_for(size_t(rows), row_grain(dim), [&](size_t begin, size_t end) {
    for (size_t row = begin; row < end; ++row) {
      const float* xr = x + row * dim;
      float* yr = y + row * dim;
      // The mean of squares in f64: at least as accurate as torch's f32 reduction.
      double squares = 0;
      for (long j = 0; j < dim; ++j) squares += double(xr[j]) * xr[j];
      const float variance = float(squares / double(dim));
      const float r = float(1.0 / std::sqrt(double(variance + eps)));
      rstd[row] = r;
      scale_row(dim, xr, weight, r, yr);
    }
  });
}

void rmsnorm_apply(long rows, long dim, const float* x, const float* weight, const float* rstd,
                   float* y) {
  ZN_CHECK(rows >= 0 && dim > 0, "rmsnorm_apply: bad shape rows=", rows, " dim=", dim);
  parallel_for(size_t(rows), row_grain(dim), [&](size_t begin, size_t end) {
    for (size_t row = begin; row < end; ++row) scale_row(dim, x + row * dim, weight, rstd[row], y + row * dim);
  });
}

void rmsnorm_backward(long rows, long dim, const float* x, const float* weight, const float* rstd,
                      const float* dy, float* dx, float* dweight) {
  ZN_CHECK(rows >= 0 && dim > 0, "rmsnorm_backward: bad shape rows=", rows, " dim=", dim);
  // dx: independent rows.
  parallel_for(size_t(rows), row_grain(dim), [&](size_t begin, size_t end) {
    for (size_t row = begin; row < end; ++row) {
      const float* xr = x + row * dim;
      const float* dyr = dy + row * dim;
      float* dxr = dx + row * dim;
      const double r = rstd[row];
      double dot = 0;  // sum_j w_j dy_j x_j
      for (long j = 0; j < dim; ++j) dot += double(weight[j]) * dyr[j] * xr[j];
      const float coef = float(r * r * r * dot / double(dim));
      const float rf = float(r);
      for (long j = 0; j < dim; ++j) dxr[j] = rf * (weight[j] * dyr[j]) - coef * xr[j];
    }
  });
  // dweight: split by columns, so each thread owns its slice of dweight (no races, and the sum
  // order is the same for any thread count).
  if (!dweight) return;
  parallel_for(size_t(dim), 64, [&](size_t begin, size_t end) {
    std::vector<float> sums(end - begin, 0.0f);
    for (long row = 0; row < rows; ++row) {
      const float* xr = x + row * dim;
      const float* dyr = dy + row * dim;
      const float r = rstd[row];
      for (size_t j = begin; j < end; ++j) sums[j - begin] += dyr[j] * (xr[j] * r);
    }
    for (size_t j = begin; j < end; ++j) dweight[j] += sums[j - begin];
  });
}

}  // namespace zn::cpu
