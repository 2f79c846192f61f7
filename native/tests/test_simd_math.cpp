// The AVX2 bf16 rounding (core/simd_math.h) against f32_to_bf16 on every sign, exponent and top
// mantissa bits with the low halves where rounding decides (ties both ways, NaN payloads), and
// the AVX2 exp against std::exp in double: a dense sweep of [-104, 89] (every
// result from 0 through the subnormals to FLT_MAX) and the special values expf defines.
// Measured: at most 1.24 ulp on this sweep (at x = 58.64), 1.26 on a 2^24-point one (the bound
// checked is 2).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "core/bf16.h"
#include "core/cpu_features.h"
#include "core/simd_math.h"
#include "harness.h"

using namespace zn;

namespace {

// Distance from the exact e^x to the float result, in units of the last place of the exact
// value's float neighbourhood (subnormals share one ulp, 2^-149).
double ulp_error(float x, float result) {
  const double exact = std::exp(double(x));
  if (exact > double(std::numeric_limits<float>::max())) return std::isinf(result) ? 0.0 : HUGE_VAL;
  int exponent = 0;
  std::frexp(exact, &exponent);  // exact = m 2^exponent, m in [0.5, 1)
  const double ulp = std::ldexp(1.0, std::max(exponent - 24, -149));
  return std::fabs(double(result) - exact) / ulp;
}

#if defined(__x86_64__)
ZN_TARGET_AVX2 void exp_avx2_of(const float* x, float* out, long n) {
  for (long i = 0; i < n; i += 8) {
    const __m256i lanes = simd::first_lanes(n - i);
    _mm256_maskstore_ps(out + i, lanes, simd::exp_avx2(_mm256_maskload_ps(x + i, lanes)));
  }
}

// -Wmaybe-uninitialized: GCC bug 105593 in the AVX-512 headers (see attention_avx512.cpp).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
ZN_TARGET_AVX512F void exp_avx512_of(const float* x, float* out, long n) {
  for (long i = 0; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(out + i, lanes, simd::exp_avx512(_mm512_maskz_loadu_ps(lanes, x + i)));
  }
}
#pragma GCC diagnostic pop
#endif

// Without AVX2 and FMA the kernels never take their AVX2 paths, the only callers: then the
// tests check that instead.
bool has_avx2() {
  if (cpu_features().avx2 && cpu_features().fma) return true;
  EXPECT(cpu_path() == CpuPath::Scalar, "no AVX2/FMA (", cpu_features_string(), ") but path ",
         cpu_path_name(cpu_path()));
  return false;
}

}  // namespace

#if defined(__x86_64__)
ZN_TEST("simd_math.exp_within_2_ulp_of_exact_over_the_float_range") {
  if (!has_avx2()) return;
  // 2^22 + 1 evenly spaced points, plus every float where the result changes regime: the
  // overflow edge, the last normal results (FLT_MIN) and the subnormal-to-zero edge.
  std::vector<float> x;
  const long steps = 1L << 22;
  for (long i = 0; i <= steps; ++i) x.push_back(float(-104.0 + 193.0 * double(i) / double(steps)));
  for (float v = 88.70f; v <= 89.0f; v = std::nextafter(v, 100.0f)) x.push_back(v);
  for (float v = -104.0f; v <= -103.0f; v = std::nextafter(v, 0.0f)) x.push_back(v);
  for (float v = -87.5f; v <= -87.2f; v = std::nextafter(v, 0.0f)) x.push_back(v);  // FLT_MIN edge
  std::vector<float> result(x.size());
  exp_avx2_of(x.data(), result.data(), long(x.size()));
  double worst = 0;
  float worst_x = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double e = ulp_error(x[i], result[i]);
    if (e > worst) worst = e, worst_x = x[i];
  }
  std::printf("     exp_avx2: max error %.3f ulp (at x = %.9g) over %zu points\n", worst, worst_x, x.size());
  EXPECT(worst <= 2.0, "max error ", worst, " ulp at x = ", worst_x);
}

ZN_TARGET_AVX2 void to_bf16_avx2_of(const float* x, bf16* out, long n) {
  for (long i = 0; i < n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), simd::to_bf16_avx2(_mm256_loadu_ps(x + i)));
  }
}

ZN_TEST("simd_math.bf16_rounding_gives_the_scalar_bits") {
  if (!has_avx2()) return;
  // Every high half (sign, exponent, 7 mantissa bits: zeros, subnormals, infinities, NaNs) with
  // low halves below, at and above the tie, for an even and an odd kept bit alike.
  const uint32_t lows[] = {0x0000, 0x0001, 0x3fff, 0x7fff, 0x8000, 0x8001, 0xc000, 0xffff};
  std::vector<float> x;
  for (uint32_t high = 0; high < 0x10000; ++high) {
    for (uint32_t low : lows) {
      const uint32_t bits = high << 16 | low;
      float f;
      std::memcpy(&f, &bits, 4);
      x.push_back(f);
    }
  }
  std::vector<bf16> vector_bits(x.size());
  to_bf16_avx2_of(x.data(), vector_bits.data(), long(x.size()));
  long mismatches = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const uint16_t want = f32_to_bf16(x[i]).bits;
    if (vector_bits[i].bits != want && mismatches++ < 5) {
      uint32_t bits;
      std::memcpy(&bits, &x[i], 4);
      EXPECT(false, "bf16 of 0x", std::hex, bits, ": vector 0x", vector_bits[i].bits, ", scalar 0x", want);
    }
  }
  EXPECT(mismatches == 0, mismatches, " of ", x.size(), " roundings differ");
  // The cases the sweep is for, checked against their definition rather than the scalar code
  // (index high * 8 + k is high half `high` with low half lows[k]).
  EXPECT(vector_bits[0x3f80u * 8 + 4].bits == 0x3f80, "1 + half an ulp ties to the even 1.0");
  EXPECT(vector_bits[0x3f81u * 8 + 4].bits == 0x3f82, "a tie above an odd kept bit rounds up");
  EXPECT(vector_bits[0x3f80u * 8 + 5].bits == 0x3f81, "just above a tie rounds up");
  EXPECT(vector_bits[0x7f7fu * 8 + 4].bits == 0x7f80, "the largest tie overflows to +inf");
  EXPECT(vector_bits[0x7f80u * 8].bits == 0x7f80, "+inf stays +inf");
  EXPECT((vector_bits[0x7f80u * 8 + 1].bits & 0x7fc0) == 0x7fc0, "a signaling NaN stays a NaN, quieted");
  EXPECT(vector_bits[0xffa5u * 8 + 1].bits == 0xffe5, "a negative NaN keeps its sign and payload top");
}

ZN_TEST("simd_math.exp_special_values_as_expf") {
  if (!has_avx2()) return;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float largest_finite_x = 88.72283172607421875f;  // 0x42b17217: the next float up overflows
  const std::vector<float> x{0.0f, -0.0f, inf, -inf, nan, -nan, largest_finite_x,
                             std::nextafter(largest_finite_x, inf), 1000.0f, -1000.0f, 1e-30f, -1e-30f,
                             -103.0f, -200.0f, std::numeric_limits<float>::max(), -std::numeric_limits<float>::max()};
  std::vector<float> result(x.size());
  exp_avx2_of(x.data(), result.data(), long(x.size()));
  auto at = [&](size_t i) { return result[i]; };
  EXPECT(at(0) == 1.0f && at(1) == 1.0f, "e^0 ", at(0), " e^-0 ", at(1));
  EXPECT(at(2) == inf, "e^inf = ", at(2));
  EXPECT(at(3) == 0.0f && !std::signbit(at(3)), "e^-inf = ", at(3));
  EXPECT(std::isnan(at(4)) && std::isnan(at(5)), "e^NaN = ", at(4), ", ", at(5));
  EXPECT(std::isfinite(at(6)) && ulp_error(x[6], at(6)) <= 2.0, "e^", x[6], " = ", at(6));
  EXPECT(at(7) == inf && at(8) == inf, "past the overflow edge: ", at(7), ", ", at(8));
  EXPECT(at(9) == 0.0f, "e^-1000 = ", at(9));
  EXPECT(at(10) == 1.0f && at(11) == 1.0f, "e^(+-1e-30) = ", at(10), ", ", at(11));
  EXPECT(at(12) > 0.0f && at(12) < std::numeric_limits<float>::min() && ulp_error(x[12], at(12)) <= 2.0,
         "e^-103 is a subnormal, got ", at(12));
  EXPECT(at(13) == 0.0f, "e^-200 = ", at(13));
  EXPECT(at(14) == inf && at(15) == 0.0f, "e^(+-FLT_MAX) = ", at(14), ", ", at(15));
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) continue;
    EXPECT(!std::isnan(result[i]), "e^", x[i], " is NaN");
    EXPECT(result[i] >= 0.0f, "e^", x[i], " = ", result[i]);
  }
}
// The attention's AVX-512 path promises the AVX2 path's bits, so exp_avx512 must give
// exp_avx2's bits lane for lane: on a dense sweep, every regime edge and the special values.
ZN_TEST("simd_math.exp_avx512_gives_the_avx2_bits") {
  if (!has_avx2()) return;
  if (!cpu_features().avx512f) {
    EXPECT(cpu_path() != CpuPath::Avx512Bf16, "no AVX-512F but path ", cpu_path_name(cpu_path()));
    return;
  }
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> x{0.0f, -0.0f, inf, -inf, nan, -nan, 1000.0f, -1000.0f, 1e-30f, -1e-30f,
                       std::numeric_limits<float>::max(), -std::numeric_limits<float>::max()};
  const long steps = 1L << 20;
  for (long i = 0; i <= steps; ++i) x.push_back(float(-110.0 + 205.0 * double(i) / double(steps)));
  for (float v = 88.70f; v <= 89.0f; v = std::nextafter(v, 100.0f)) x.push_back(v);
  for (float v = -104.0f; v <= -103.0f; v = std::nextafter(v, 0.0f)) x.push_back(v);
  x.push_back(1.5f);  // an odd count: the last vector is partial
  std::vector<float> narrow(x.size()), wide(x.size());
  exp_avx2_of(x.data(), narrow.data(), long(x.size()));
  exp_avx512_of(x.data(), wide.data(), long(x.size()));
  long differ = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const bool same = std::memcmp(&narrow[i], &wide[i], sizeof(float)) == 0 ||
                      (std::isnan(narrow[i]) && std::isnan(wide[i]));
    if (!same && differ++ < 5) EXPECT(false, "x = ", x[i], ": avx2 ", narrow[i], ", avx512 ", wide[i]);
  }
  EXPECT(differ == 0, differ, " of ", x.size(), " results differ");
}
#endif
