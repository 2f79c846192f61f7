// SwiGLU forward and backward (see swiglu.h), elementwise in f32:
//   out = g * s * u with s = sigmoid(g);  dgate = dout * u * s * (1 + g * (1 - s));  dup = dout * g * s
#include "kernels/cuda/swiglu.h"

#include "kernels/cuda/check.h"
#include "kernels/cuda/device.cuh"

namespace zn::cuda {

using device::from_f32;
using device::to_f32;

namespace {

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

template <typename T>
__global__ void swiglu_forward_kernel(long n, const T* gate, const T* up, T* out) {
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
    const float g = to_f32(gate[i]);
    out[i] = from_f32<T>(g * sigmoid(g) * to_f32(up[i]));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(long n, const T* gate, const T* up, const T* dout, T* dgate,
                                       T* dup) {
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
    const float g = to_f32(gate[i]), u = to_f32(up[i]), d = to_f32(dout[i]);
    const float s = sigmoid(g);
    dgate[i] = from_f32<T>(d * u * s * (1.0f + g * (1.0f - s)));
    dup[i] = from_f32<T>(d * g * s);
  }
}

void require_one_dtype(const char* op, std::initializer_list<DType> dtypes) {
  for (DType t : dtypes)
    ZN_CHECK(t == *dtypes.begin(), op, ": all arrays must share one dtype");
}

}  // namespace

void swiglu_forward(long n, ConstArray gate, ConstArray up, Array out, cudaStream_t stream) {
  ZN_CHECK(n >= 0, "swiglu_forward: negative size ", n);
  require_one_dtype("swiglu_forward", {gate.dtype, up.dtype, out.dtype});
  if (n == 0) return;
  dispatch_dtype(gate.dtype, [&](auto tag) {
    using T = decltype(tag);
    swiglu_forward_kernel<T><<<grid_size(n, 256), 256, 0, stream>>>(
        n, static_cast<const T*>(gate.data), static_cast<const T*>(up.data), static_cast<T*>(out.data));
  });
  ZN_CUDA_CHECK_LAUNCH();
}

void swiglu_backward(long n, ConstArray gate, ConstArray up, ConstArray dout, Array dgate,
                     Array dup, cudaStream_t stream) {
  ZN_CHECK(n >= 0, "swiglu_backward: negative size ", n);
  require_one_dtype("swiglu_backward", {gate.dtype, up.dtype, dout.dtype, dgate.dtype, dup.dtype});
  if (n == 0) return;
  dispatch_dtype(gate.dtype, [&](auto tag) {
    using T = decltype(tag);
    swiglu_backward_kernel<T><<<grid_size(n, 256), 256, 0, stream>>>(
        n, static_cast<const T*>(gate.data), static_cast<const T*>(up.data),
        static_cast<const T*>(dout.data), static_cast<T*>(dgate.data), static_cast<T*>(dup.data));
  });
  ZN_CUDA_CHECK_LAUNCH();
}

}  // namespace zn::cuda
