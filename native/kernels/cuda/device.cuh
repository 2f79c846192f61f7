// Device-side helpers shared by the .cu files of this folder (never included by host-only code):
// element conversion for the two storage types, warp reductions, and thin wrappers over the
// tensor-core instructions (ldmatrix, mma.sync m16n8k16 bf16, cp.async) whose operand layouts
// the GEMM and attention kernels rely on (ptx.cuh). Fragment layouts (PTX ISA, "mma.m16n8k16"): with
// g = lane / 4 and t = lane % 4, an A fragment holds rows g and g + 8, columns 2t, 2t + 1 (regs
// 0, 1) and 2t + 8, 2t + 9 (regs 2, 3); a B fragment holds column g, rows 2t, 2t + 1 and
// 2t + 8, 2t + 9; the f32 accumulator holds rows g and g + 8, columns 2t, 2t + 1.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "core/dtype.h"
#include "core/errors.h"
#include "kernels/cuda/ptx.cuh"

namespace zn::cuda::device {

// Storage types: f32 and bf16 (as __nv_bfloat16, bit-identical to zn::bf16).
template <typename T>
__device__ __forceinline__ float to_f32(T x);
template <>
__device__ __forceinline__ float to_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

struct Add {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// `op` over the 32 lanes of a warp; every lane gets the result.
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T x, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1) x = op(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) { return warp_reduce(x, Add{}); }
__device__ __forceinline__ double warp_sum(double x) { return warp_reduce(x, Add{}); }
__device__ __forceinline__ float warp_max(float x) { return warp_reduce(x, Max{}); }

// `op` over the block (blockDim.x a multiple of 32, at most 1024), starting from `identity`;
// every thread gets the result. `scratch` holds 32 values; the call begins and ends with a
// barrier, so it can be reused.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T x, T identity, Op op, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = warp_reduce(x, op);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  T total = identity;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) total = op(total, scratch[w]);
  __syncthreads();
  return total;
}
template <typename T>
__device__ __forceinline__ T block_sum(T x, T* scratch) { return block_reduce(x, T(0), Add{}, scratch); }
__device__ __forceinline__ float block_max(float x, float* scratch) {
  return block_reduce(x, -INFINITY, Max{}, scratch);
}

// Two f32 rounded to bf16 and packed, the first in the low half (the lower column index).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  return bits;
}

}  // namespace zn::cuda::device

namespace zn::cuda {

// Calls f(float{}) or f(__nv_bfloat16{}) for a run-time dtype, so one template serves both.
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  if (dtype == DType::F32)
    f(float{});
  else
    f(__nv_bfloat16{});
}

inline unsigned grid_size(long work, int per_block, long cap = 65535L * 16) {
  long blocks = (work + per_block - 1) / per_block;
  if (blocks < 1) blocks = 1;
  return unsigned(blocks < cap ? blocks : cap);
}

}  // namespace zn::cuda
