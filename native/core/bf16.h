// bfloat16 storage: the top 16 bits of an IEEE f32. Conversion rounds to nearest even, as
// PyTorch and the hardware (vcvtneps2bf16, __float2bfloat16_rn) do; NaN stays NaN.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace zn {

struct bf16 {
  uint16_t bits;
};

inline float bf16_to_f32(bf16 x) {
  uint32_t u = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bf16 f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

// f32_to_bf16 over n values, split over the thread pool (loading and publishing weights).
void round_to_bf16(size_t n, const float* from, bf16* to);

}  // namespace zn
