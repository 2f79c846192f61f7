// IEEE binary16 (half) storage. Widening to f32 is exact; narrowing rounds to nearest even
// (as PyTorch's .half() and the hardware do), overflows to infinity, keeps NaN a quiet NaN, and
// produces subnormals below 2^-14.
#pragma once
#include <cstdint>
#include <cstring>

namespace zn {

inline float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24 is exact in f32.
    float magnitude = float(mantissa) * 5.9604644775390625e-8f;
    std::memcpy(&bits, &magnitude, 4);
    bits |= sign;
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_f16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = x & 0x80000000u;
  x ^= sign;
  uint16_t out;
  if (x >= 0x47800000u) {  // |f| >= 2^16: infinity, or NaN kept quiet
    out = x > 0x7f800000u ? 0x7e00 : 0x7c00;
  } else if (x < 0x38800000u) {
    // Below the smallest normal half (2^-14): adding 0.5f, whose ulp is 2^-24 (the half
    // subnormal step), rounds to nearest even in the FPU and leaves the half bits at the bottom.
    float shifted;
    std::memcpy(&shifted, &x, 4);
    shifted += 0.5f;
    uint32_t bits;
    std::memcpy(&bits, &shifted, 4);
    out = uint16_t(bits - 0x3f000000u);
  } else {
    // Re-bias the exponent and round the 13 dropped mantissa bits to nearest even; a carry
    // into the exponent is the correct result (up to infinity above 65504).
    const uint32_t mantissa_odd = (x >> 13) & 1u;
    x += (uint32_t(15 - 127) << 23) + 0xfffu + mantissa_odd;
    out = uint16_t(x >> 13);
  }
  return uint16_t(out | (sign >> 16));
}

}  // namespace zn
