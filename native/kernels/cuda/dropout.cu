// Inverted dropout (see dropout.h): one thread an element, the mask drawn where it is used.
#include "kernels/cuda/dropout.h"

#include "kernels/cuda/check.h"
#include "kernels/cuda/device.cuh"

namespace zn::cuda {

using device::from_f32;
using device::to_f32;

namespace {

template <typename X, typename Y>
__global__ void dropout_kernel(long n, cpu::DropoutMask mask, const X* x, Y* y, bool accumulate) {
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
    const float kept = cpu::dropout_keeps(mask, uint64_t(i)) ? to_f32(x[i]) * mask.scale : 0.0f;
    y[i] = from_f32<Y>(accumulate ? to_f32(y[i]) + kept : kept);
  }
}

}  // namespace

void dropout_forward(long rows, long cols, const cpu::DropoutMask& mask, ConstArray x, Array y, bool accumulate,
                     cudaStream_t stream) {
  ZN_CHECK(rows >= 0 && cols >= 0, "dropout: negative shape [", rows, ", ", cols, "]");
  const long n = rows * cols;
  if (n == 0) return;
  dispatch_dtype(x.dtype, [&](auto x_tag) {
    using X = decltype(x_tag);
    dispatch_dtype(y.dtype, [&](auto y_tag) {
      using Y = decltype(y_tag);
      dropout_kernel<X, Y><<<grid_size(n, 256), 256, 0, stream>>>(n, mask, static_cast<const X*>(x.data),
                                                                   static_cast<Y*>(y.data), accumulate);
    });
  });
  ZN_CUDA_CHECK_LAUNCH();
}

}  // namespace zn::cuda
