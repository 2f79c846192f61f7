// RMSNorm forward and backward (see rmsnorm.h). One block per row; the backward keeps each
// block's dweight partial sums in shared memory and adds them to dweight once per block.
//   forward:  r = rsqrt(mean(x^2) + eps),  y = w * x * r
//   backward: dx = r * (dy * w) - (r^3 / dim) * x * sum(dy * w * x),  dweight += dy * x * r
#include "kernels/cuda/rmsnorm.h"

#include "kernels/cuda/check.h"
#include "kernels/cuda/device.cuh"

namespace zn::cuda {

using device::block_sum;
using device::from_f32;
using device::to_f32;

namespace {

constexpr int kThreads = 256;
constexpr long kMaxBlocks = 1024;
constexpr long kSharedPartialDims = 12288;  // 48 KiB of f32 partial sums

template <typename X, typename W, typename Y>
__global__ void __launch_bounds__(kThreads) rmsnorm_forward_kernel(long rows, long dim, float eps,
                                                                    const X* x, const W* weight,
                                                                    Y* y, float* rstd) {
  __shared__ float scratch[32];
  for (long row = blockIdx.x; row < rows; row += gridDim.x) {
    const X* xr = x + row * dim;
    float sum_sq = 0.0f;
    for (long i = threadIdx.x; i < dim; i += blockDim.x) {
      const float v = to_f32(xr[i]);
      sum_sq += v * v;
    }
    sum_sq = block_sum(sum_sq, scratch);
    const float r = rsqrtf(sum_sq / float(dim) + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    for (long i = threadIdx.x; i < dim; i += blockDim.x)
      y[row * dim + i] = from_f32<Y>(to_f32(weight[i]) * (to_f32(xr[i]) * r));
  }
}

template <typename X, typename W, typename Y>
__global__ void __launch_bounds__(kThreads) rmsnorm_backward_kernel(
    long rows, long dim, const X* x, const W* weight, const float* rstd, const Y* dy, X* dx,
    float* dweight, bool shared_partials) {
  extern __shared__ float partial[];  // [dim] when shared_partials
  __shared__ float scratch[32];
  if (shared_partials)
    for (long i = threadIdx.x; i < dim; i += blockDim.x) partial[i] = 0.0f;
  for (long row = blockIdx.x; row < rows; row += gridDim.x) {
    const X* xr = x + row * dim;
    const Y* dyr = dy + row * dim;
    const float r = rstd[row];
    float dot = 0.0f;
    for (long i = threadIdx.x; i < dim; i += blockDim.x)
      dot += to_f32(dyr[i]) * to_f32(weight[i]) * to_f32(xr[i]);
    dot = block_sum(dot, scratch);
    const float c = r * r * r * dot / float(dim);
    for (long i = threadIdx.x; i < dim; i += blockDim.x) {
      const float xi = to_f32(xr[i]), gi = to_f32(dyr[i]);
      dx[row * dim + i] = from_f32<X>(r * gi * to_f32(weight[i]) - c * xi);
      if (!dweight) continue;  // a frozen weight
      if (shared_partials)
        partial[i] += gi * xi * r;  // element i belongs to this thread alone
      else
        atomicAdd(dweight + i, gi * xi * r);
    }
  }
  if (shared_partials && dweight)
    for (long i = threadIdx.x; i < dim; i += blockDim.x) atomicAdd(dweight + i, partial[i]);
}

}  // namespace

void rmsnorm_forward(long rows, long dim, float eps, ConstArray x, ConstArray weight, Array y,
                     float* rstd, cudaStream_t stream) {
  ZN_CHECK(rows >= 0 && dim > 0, "rmsnorm_forward: bad shape rows=", rows, " dim=", dim);
  if (rows == 0) return;
  dispatch_dtype(x.dtype, [&](auto xt) {
    dispatch_dtype(weight.dtype, [&](auto wt) {
      dispatch_dtype(y.dtype, [&](auto yt) {
        using X = decltype(xt);
        using W = decltype(wt);
        using Y = decltype(yt);
        rmsnorm_forward_kernel<X, W, Y><<<unsigned(rows < kMaxBlocks * 64 ? rows : kMaxBlocks * 64), kThreads, 0, stream>>>(
            rows, dim, eps, static_cast<const X*>(x.data), static_cast<const W*>(weight.data),
            static_cast<Y*>(y.data), rstd);
      });
    });
  });
  ZN_CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward(long rows, long dim, ConstArray x, ConstArray weight, const float* rstd,
                      ConstArray dy, Array dx, float* dweight, cudaStream_t stream) {
  ZN_CHECK(rows >= 0 && dim > 0, "rmsnorm_backward: bad shape rows=", rows, " dim=", dim);
  ZN_CHECK(dx.dtype == x.dtype, "rmsnorm_backward: dx must have x's dtype (", dtype_name(x.dtype), ")");
  if (rows == 0) return;
  const bool shared_partials = dweight && dim <= kSharedPartialDims;
  const size_t smem = shared_partials ? size_t(dim) * sizeof(float) : 0;
  const unsigned blocks = unsigned(rows < kMaxBlocks ? rows : kMaxBlocks);
  dispatch_dtype(x.dtype, [&](auto xt) {
    dispatch_dtype(weight.dtype, [&](auto wt) {
      dispatch_dtype(dy.dtype, [&](auto yt) {
        using X = decltype(xt);
        using W = decltype(wt);
        using Y = decltype(yt);
        rmsnorm_backward_kernel<X, W, Y><<<blocks, kThreads, smem, stream>>>(
            rows, dim, static_cast<const X*>(x.data), static_cast<const W*>(weight.data), rstd,
            static_cast<const Y*>(dy.data), static_cast<X*>(dx.data), dweight, shared_partials);
      });
    });
  });
  ZN_CUDA_CHECK_LAUNCH();
}

}  // namespace zn::cuda
