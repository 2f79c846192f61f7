// Element types the kernels read. Accumulation is always f32.
#pragma once
#include <cstddef>

namespace zn {

enum class DType { F32, BF16 };

inline size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
inline const char* dtype_name(DType t) { return t == DType::F32 ? "f32" : "bf16"; }

}  // namespace zn
