// Multi-tensor AdamW, gradient sum of squares and the clipping coefficient (see adamw.h):
//   p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps),   g = grad * scale
// The bias corrections are computed once on the host in f64. Each launch takes up to
// kTensorsPerLaunch tensors in its argument block; every thread walks every tensor of the batch
// with a grid stride, so a launch costs one pass over the data whatever the tensor sizes.
#include "kernels/cuda/adamw.h"

#include <cmath>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device.cuh"

namespace zn::cuda {

namespace {

constexpr int kTensorsPerLaunch = 24;
constexpr int kThreads = 256;

struct AdamWBatch {
  float* param[kTensorsPerLaunch];
  const float* grad[kTensorsPerLaunch];
  float* m[kTensorsPerLaunch];
  float* v[kTensorsPerLaunch];
  __nv_bfloat16* param_bf16[kTensorsPerLaunch];
  long n[kTensorsPerLaunch];
  int count;
};

struct AdamWConstants {
  float lr, beta1, beta2, eps, weight_decay, step_size, bias_correction2_sqrt, grad_scale;
};

__global__ void __launch_bounds__(kThreads) adamw_kernel(AdamWBatch batch, AdamWConstants c,
                                                         const float* grad_scale) {
  const float scale = grad_scale ? *grad_scale : c.grad_scale;
  const long stride = long(gridDim.x) * blockDim.x;
  for (int t = 0; t < batch.count; ++t) {
    float* param = batch.param[t];
    float* m = batch.m[t];
    float* v = batch.v[t];
    for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < batch.n[t]; i += stride) {
      const float g = batch.grad[t][i] * scale;
      float p = param[i] * (1.0f - c.lr * c.weight_decay);
      const float mi = c.beta1 * m[i] + (1.0f - c.beta1) * g;
      const float vi = c.beta2 * v[i] + (1.0f - c.beta2) * g * g;
      p -= c.step_size * mi / (sqrtf(vi) / c.bias_correction2_sqrt + c.eps);
      m[i] = mi;
      v[i] = vi;
      param[i] = p;
      if (batch.param_bf16[t]) batch.param_bf16[t][i] = __float2bfloat16_rn(p);
    }
  }
}

struct GradBatch {
  const float* grad[kTensorsPerLaunch];
  long n[kTensorsPerLaunch];
  int count;
};

__global__ void __launch_bounds__(kThreads) sum_of_squares_kernel(GradBatch batch, double* result) {
  __shared__ double scratch[32];
  const long stride = long(gridDim.x) * blockDim.x;
  double sum = 0.0;
  for (int t = 0; t < batch.count; ++t)
    for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < batch.n[t]; i += stride) {
      const double g = batch.grad[t][i];
      sum += g * g;
    }
  sum = device::block_sum(sum, scratch);
  if (threadIdx.x == 0) atomicAdd(result, sum);
}

__global__ void clip_kernel(const double* sum_of_squares, double max_norm, float* coefficient) {
  if (max_norm <= 0) {
    *coefficient = 1.0f;
    return;
  }
  const double coef = max_norm / (sqrt(*sum_of_squares) + 1e-6);
  *coefficient = coef < 1.0 ? float(coef) : 1.0f;
}

unsigned blocks_for(long largest) { return grid_size(largest, kThreads, 4096); }

}  // namespace

void adamw_update(const AdamWTensor* tensors, int count, const AdamWStep& hp,
                  const float* grad_scale, cudaStream_t stream) {
  ZN_CHECK(count >= 0, "adamw_update: negative tensor count ", count);
  ZN_CHECK(hp.step >= 1, "adamw_update: step must start at 1, got ", hp.step);
  AdamWConstants c{};
  c.lr = hp.lr;
  c.beta1 = hp.beta1;
  c.beta2 = hp.beta2;
  c.eps = hp.eps;
  c.weight_decay = hp.weight_decay;
  c.step_size = float(double(hp.lr) / (1.0 - std::pow(double(hp.beta1), double(hp.step))));
  c.bias_correction2_sqrt = float(std::sqrt(1.0 - std::pow(double(hp.beta2), double(hp.step))));
  c.grad_scale = hp.grad_scale;
  for (int first = 0; first < count; first += kTensorsPerLaunch) {
    AdamWBatch batch{};
    long largest = 0;
    for (int t = first; t < count && t - first < kTensorsPerLaunch; ++t) {
      const AdamWTensor& x = tensors[t];
      ZN_CHECK(x.n >= 0, "adamw_update: tensor ", t, " has negative size ", x.n);
      const int slot = batch.count++;
      batch.param[slot] = x.param;
      batch.grad[slot] = x.grad;
      batch.m[slot] = x.m;
      batch.v[slot] = x.v;
      batch.param_bf16[slot] = reinterpret_cast<__nv_bfloat16*>(x.param_bf16);
      batch.n[slot] = x.n;
      largest = x.n > largest ? x.n : largest;
    }
    adamw_kernel<<<blocks_for(largest), kThreads, 0, stream>>>(batch, c, grad_scale);
    ZN_CUDA_CHECK_LAUNCH();
  }
}

void sum_of_squares(const GradSpan* grads, int count, double* result, cudaStream_t stream) {
  ZN_CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(double), stream));
  for (int first = 0; first < count; first += kTensorsPerLaunch) {
    GradBatch batch{};
    long largest = 0;
    for (int t = first; t < count && t - first < kTensorsPerLaunch; ++t) {
      const int slot = batch.count++;
      batch.grad[slot] = grads[t].grad;
      batch.n[slot] = grads[t].n;
      largest = grads[t].n > largest ? grads[t].n : largest;
    }
    sum_of_squares_kernel<<<blocks_for(largest), kThreads, 0, stream>>>(batch, result);
    ZN_CUDA_CHECK_LAUNCH();
  }
}

void clip_coefficient(const double* sum_of_squares, double max_norm, float* coefficient,
                      cudaStream_t stream) {
  clip_kernel<<<1, 1, 0, stream>>>(sum_of_squares, max_norm, coefficient);
  ZN_CUDA_CHECK_LAUNCH();
}

}  // namespace zn::cuda
