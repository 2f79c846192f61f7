// Fills large device arrays with uniform values in [-1, 1) from a counter hash, so the timings
// get random (never zero) inputs without generating gigabytes on the host.
#include <cuda_bf16.h>

#include "check.h"
#include "kernels/cuda/check.h"

namespace zn::cuda::check {

namespace {

__device__ float hash_uniform(uint64_t i, uint64_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed;
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return float(x >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

__global__ void fill_kernel(void* data, bool bf16, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const float value = hash_uniform(i, seed);
    if (bf16) static_cast<__nv_bfloat16*>(data)[i] = __float2bfloat16_rn(value);
    else static_cast<float*>(data)[i] = value;
  }
}

}  // namespace

DeviceArray random_device(size_t n, DType t) {
  DeviceArray array(n, t);
  fill_kernel<<<4096, 256>>>(array.data(), t == DType::BF16, n, rng()());
  ZN_CUDA_CHECK_LAUNCH();
  ZN_CUDA_CHECK(cudaDeviceSynchronize());
  return array;
}

}  // namespace zn::cuda::check
