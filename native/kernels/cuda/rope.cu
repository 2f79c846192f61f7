// RoPE forward and backward (see rope.h): one thread per rotated pair; the backward is the same
// rotation with the sine negated. inv_freq travels as a kernel argument (head_dim <= 256).
#include "kernels/cuda/rope.h"

#include <cmath>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device.cuh"

namespace zn::cuda {

using device::from_f32;
using device::to_f32;

namespace {

constexpr int kMaxHeadDim = 256;

struct InvFreq {
  float value[kMaxHeadDim / 2];
};

template <typename T>
__global__ void rope_kernel(long tokens, int n_heads, int head_dim, const int32_t* positions,
                            InvFreq inv_freq, float sine_sign, T* x) {
  const int half = head_dim / 2;
  const long total = tokens * n_heads * half;
  for (long p = blockIdx.x * long(blockDim.x) + threadIdx.x; p < total; p += long(gridDim.x) * blockDim.x) {
    const int i = int(p % half);
    const long row = p / half;  // token * n_heads + head
    const long token = row / n_heads;
    float s, c;
    sincosf(float(positions[token]) * inv_freq.value[i], &s, &c);
    s *= sine_sign;
    T* base = x + row * head_dim;
    const float a = to_f32(base[i]), b = to_f32(base[i + half]);
    base[i] = from_f32<T>(a * c - b * s);
    base[i + half] = from_f32<T>(b * c + a * s);
  }
}

void rope_apply(const char* op, long tokens, int n_heads, int head_dim, float theta,
                const int32_t* positions, Array x, float sine_sign, cudaStream_t stream) {
  ZN_CHECK(tokens >= 0 && n_heads > 0, op, ": bad shape tokens=", tokens, " heads=", n_heads);
  ZN_CHECK(head_dim > 0 && head_dim % 2 == 0 && head_dim <= kMaxHeadDim, op,
           ": head_dim must be even and at most ", kMaxHeadDim, ", got ", head_dim);
  if (tokens == 0) return;
  InvFreq inv_freq{};
  for (int i = 0; i < head_dim / 2; ++i) {  // HF's f32 steps, as kernels/cpu/rope.cpp
    const float exponent = float(2 * i) / float(head_dim);
    inv_freq.value[i] = 1.0f / float(std::pow(double(theta), double(exponent)));
  }
  const long pairs = tokens * n_heads * (head_dim / 2);
  dispatch_dtype(x.dtype, [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<grid_size(pairs, 256), 256, 0, stream>>>(tokens, n_heads, head_dim, positions,
                                                             inv_freq, sine_sign, static_cast<T*>(x.data));
  });
  ZN_CUDA_CHECK_LAUNCH();
}

}  // namespace

void rope_forward(long tokens, int n_heads, int head_dim, float theta, const int32_t* positions,
                  Array x, cudaStream_t stream) {
  rope_apply("rope_forward", tokens, n_heads, head_dim, theta, positions, x, 1.0f, stream);
}

void rope_backward(long tokens, int n_heads, int head_dim, float theta, const int32_t* positions,
                   Array dx, cudaStream_t stream) {
  rope_apply("rope_backward", tokens, n_heads, head_dim, theta, positions, dx, -1.0f, stream);
}

}  // namespace zn::cuda
