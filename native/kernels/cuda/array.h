// A device pointer with its element type: how the CUDA launchers take tensors whose storage may
// be f32 or bf16 (activations and weights are bf16 in a bf16 model, f32 in the f32 test mode).
// Buffers that are always f32 (statistics, master weights, gradient accumulators) stay float*.
#pragma once
#include "core/dtype.h"

namespace zn::cuda {

struct Array {
  void* data;
  DType dtype;
};

struct ConstArray {
  const void* data;
  DType dtype;
  ConstArray(const void* d, DType t) : data(d), dtype(t) {}
  ConstArray(Array a) : data(a.data), dtype(a.dtype) {}  // NOLINT: a mutable array reads too
};

}  // namespace zn::cuda
