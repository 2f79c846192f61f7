// GEMM on every SIMD path against a float64 product of the same (bf16-rounded when the GEMM
// runs in bf16) inputs: transposes, dtypes, alpha/beta, odd shapes that cross every cache
// block, leading dimensions wider than the matrices, NaN-poisoned outputs and paddings.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "core/cpu_features.h"
#include "harness.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/gemm_internal.h"

using namespace zn;
using zn::cpu::Matrix;

namespace {

constexpr CpuPath kPaths[] = {CpuPath::Scalar, CpuPath::Avx2, CpuPath::Avx512Bf16};

// Paths this CPU runs; a path it lacks is reported as skipped, once per test.
std::vector<CpuPath> runnable_paths(const char* test) {
  std::vector<CpuPath> paths;
  for (CpuPath path : kPaths) {
    if (cpu_path_supported(path)) paths.push_back(path);
    else std::printf("     %s: %s path skipped (CPU features: %s)\n", test, cpu_path_name(path),
                     cpu_features_string().c_str());
  }
  return paths;
}

// A stored rows x cols matrix with row stride ld >= cols; the padding holds NaN, so a kernel
// that reads past a row's end poisons its result.
struct Stored {
  long rows, cols, ld;
  DType dtype;
  std::vector<float> values;  // what the GEMM should see (bf16-exact when dtype is bf16)
  std::vector<float> f32;     // storage when dtype is f32
  std::vector<bf16> b16;      // storage when dtype is bf16

  Stored(long rows_, long cols_, long pad, DType dtype_)
      : rows(rows_), cols(cols_), ld(cols_ + pad), dtype(dtype_) {
    values = test::random_f32(size_t(rows * ld));
    for (long i = 0; i < rows; ++i) {
      for (long j = cols; j < ld; ++j) values[size_t(i * ld + j)] = std::nanf("");
    }
    if (dtype == DType::BF16) {
      values = test::round_bf16(values);
      b16 = test::to_bf16(values);
    } else {
      f32 = values;
    }
  }
  Matrix matrix() const {
    return {dtype == DType::BF16 ? static_cast<const void*>(b16.data()) : f32.data(), dtype, ld};
  }
  // The value the GEMM multiplies: bf16-rounded when the GEMM computes in bf16.
  double at(long i, long j, bool bf16_compute) const {
    const float x = values[size_t(i * ld + j)];
    return bf16_compute ? double(bf16_to_f32(f32_to_bf16(x))) : double(x);
  }
};

struct Case {
  long M, N, K;
  bool trans_a, trans_b;
  DType a_dtype, b_dtype;
  float alpha, beta;
  long pad;  // extra columns in every leading dimension
};

std::string describe(CpuPath path, const Case& c) {
  std::ostringstream s;
  s << cpu_path_name(path) << " M=" << c.M << " N=" << c.N << " K=" << c.K
    << " trans_a=" << c.trans_a << " trans_b=" << c.trans_b << " A=" << dtype_name(c.a_dtype)
    << " B=" << dtype_name(c.b_dtype) << " alpha=" << c.alpha << " beta=" << c.beta
    << " pad=" << c.pad;
  return s.str();
}

void check_case(CpuPath path, const Case& c) {
  const bool bf16_compute = c.a_dtype == DType::BF16 || c.b_dtype == DType::BF16;
  const Stored A(c.trans_a ? c.K : c.M, c.trans_a ? c.M : c.K, c.pad, c.a_dtype);
  const Stored B(c.trans_b ? c.N : c.K, c.trans_b ? c.K : c.N, c.pad, c.b_dtype);
  const long ldc = c.N + c.pad;
  std::vector<float> C = test::random_f32(size_t(c.M * ldc));
  if (c.beta == 0.0f) test::poison(C);  // beta == 0 must not read C
  constexpr float kPadSentinel = 12345.0f;
  for (long i = 0; i < c.M; ++i) {
    for (long j = c.N; j < ldc; ++j) C[size_t(i * ldc + j)] = kPadSentinel;
  }

  std::vector<double> expected(size_t(c.M * c.N));
  for (long i = 0; i < c.M; ++i) {
    for (long j = 0; j < c.N; ++j) {
      double sum = 0;
      for (long p = 0; p < c.K; ++p) {
        const double a = c.trans_a ? A.at(p, i, bf16_compute) : A.at(i, p, bf16_compute);
        const double b = c.trans_b ? B.at(j, p, bf16_compute) : B.at(p, j, bf16_compute);
        sum += a * b;
      }
      const double old = c.beta == 0.0f ? 0.0 : double(c.beta) * C[size_t(i * ldc + j)];
      expected[size_t(i * c.N + j)] = double(c.alpha) * sum + old;
    }
  }

  cpu::detail::gemm_on_path(path, c.trans_a, c.trans_b, c.M, c.N, c.K, c.alpha, A.matrix(),
                            B.matrix(), c.beta, C.data(), ldc);

  std::vector<float> result(size_t(c.M * c.N));
  for (long i = 0; i < c.M; ++i) {
    for (long j = 0; j < ldc; ++j) {
      const float x = C[size_t(i * ldc + j)];
      if (j < c.N) result[size_t(i * c.N + j)] = x;
      else EXPECT(x == kPadSentinel, "C padding overwritten at row ", i, " col ", j, ": ",
                  describe(path, c));
    }
  }
  // The reference multiplies exactly the values the kernel multiplies (bf16-rounded in bf16
  // mode), so both modes differ from it only by f32 accumulation error.
  test::expect_close(result, expected, test::kF32RelTol, describe(path, c));
}

struct Shape {
  long M, N, K;
};

// Odd shapes; 150 rows cross the MC blocks (144), K = 300 and 517 cross KC (256 for f32, odd
// K leaves half a bf16 pair), K = 1700 is packed in two f32 passes (KD 1024) and K = 2113 in
// two bf16 passes (KD 2048: 1088 + 1025, the second ending in half a pair) and three f32 ones,
// N = 3100 crosses NC (3072; for bf16 with M <= 576, 768 four times); the largest ones run threaded. Up to 8 rows against a transposed
// B take the unblocked row-dot path: the small shapes, and 3 x 300 x 517 and 8 x 700 x 64 for
// its pairs, groups of four rows, tails and threads; 21 x 130 x 77 and 32 x 9 x 300 are just
// past it.
constexpr Shape kShapes[] = {{1, 1, 1},    {1, 17, 3},    {5, 1, 9},      {7, 13, 5},
                             {6, 16, 8},   {13, 35, 33},  {37, 19, 300},  {150, 70, 300},
                             {31, 45, 517}, {9, 3100, 7}, {200, 97, 64},  {3, 300, 517},
                             {8, 700, 64},  {21, 130, 77}, {32, 9, 300}, {40, 50, 1700},
                             {27, 45, 2113}};

constexpr DType kDtypePairs[][2] = {
    {DType::F32, DType::F32}, {DType::BF16, DType::BF16}, {DType::F32, DType::BF16},
    {DType::BF16, DType::F32}};

constexpr float kAlphaBeta[][2] = {{1.0f, 0.0f}, {0.5f, 1.0f}, {-1.5f, 0.25f}};

}  // namespace

ZN_TEST("gemm.matches_float64_on_every_path") {
  for (CpuPath path : runnable_paths("gemm.matches_float64_on_every_path")) {
    size_t variant = 0;
    for (const Shape& s : kShapes) {
      for (const auto& dtypes : kDtypePairs) {
        for (int trans = 0; trans < 4; ++trans, ++variant) {
          // Every combination of transposes and dtypes per shape; alpha/beta and padding
          // rotate through their values.
          const auto& ab = kAlphaBeta[variant % 3];
          check_case(path, {s.M, s.N, s.K, bool(trans & 1), bool(trans & 2), dtypes[0],
                            dtypes[1], ab[0], ab[1], variant % 5 < 2 ? 3L : 0L});
        }
      }
    }
  }
}

ZN_TEST("gemm.empty_and_degenerate_sizes") {
  for (CpuPath path : runnable_paths("gemm.empty_and_degenerate_sizes")) {
    for (const Shape& s : {Shape{0, 5, 3}, Shape{5, 0, 3}, Shape{0, 0, 0}}) {
      check_case(path, {s.M, s.N, s.K, false, true, DType::F32, DType::F32, 1.0f, 0.0f, 1});
    }
    // K == 0: C = beta * C, and with beta == 0 the NaN garbage becomes exact zeros.
    for (float beta : {0.0f, 0.75f}) {
      check_case(path, {4, 5, 0, false, false, DType::BF16, DType::F32, 1.0f, beta, 2});
    }
    // alpha == 0: the product is skipped and C only scales.
    check_case(path, {3, 20, 7, true, false, DType::F32, DType::F32, 0.0f, 0.5f, 0});
  }
}

ZN_TEST("gemm.public_entry_uses_the_selected_path") {
  const Case c{23, 41, 19, false, true, DType::BF16, DType::BF16, 1.0f, 0.0f, 0};
  const Stored A(c.M, c.K, 0, c.a_dtype), B(c.N, c.K, 0, c.b_dtype);
  std::vector<float> via_gemm(size_t(c.M * c.N)), via_path(size_t(c.M * c.N));
  test::poison(via_gemm);
  test::poison(via_path);
  cpu::gemm(false, true, c.M, c.N, c.K, 1.0f, A.matrix(), B.matrix(), 0.0f, via_gemm.data(), c.N);
  cpu::detail::gemm_on_path(cpu_path(), false, true, c.M, c.N, c.K, 1.0f, A.matrix(), B.matrix(),
                            0.0f, via_path.data(), c.N);
  for (size_t i = 0; i < via_gemm.size(); ++i) {
    EXPECT(via_gemm[i] == via_path[i], "element ", i, " on path ", cpu_path_name(cpu_path()));
  }
}

ZN_TEST("gemm.rejects_bad_arguments") {
  const std::vector<float> a(12, 1.0f), b(12, 1.0f);
  std::vector<float> c(12);
  auto rejects = [&](auto call, const char* fragment) {
    try {
      call();
    } catch (const Error& e) {
      EXPECT(std::string(e.what()).find(fragment) != std::string::npos, "message: ", e.what());
      return;
    }
    fail("expected an error mentioning '", fragment, "'");
  };
  const Matrix A{a.data(), DType::F32, 4}, B{b.data(), DType::F32, 3};
  rejects([&] { cpu::gemm(false, false, -1, 3, 4, 1, A, B, 0, c.data(), 3); }, "negative size");
  rejects([&] { cpu::gemm(false, false, 3, 3, 4, 1, {a.data(), DType::F32, 3}, B, 0, c.data(), 3); },
          "ldA=3");
  rejects([&] { cpu::gemm(false, true, 3, 3, 4, 1, A, B, 0, c.data(), 3); }, "ldB=3");
  rejects([&] { cpu::gemm(false, false, 3, 3, 4, 1, A, B, 0, c.data(), 2); }, "ldc=2");
  rejects([&] { cpu::gemm(false, false, 3, 3, 4, 1, {nullptr, DType::F32, 4}, B, 0, c.data(), 3); },
          "A is null");
  for (CpuPath path : kPaths) {
    if (cpu_path_supported(path)) continue;
    rejects([&] { cpu::detail::gemm_on_path(path, false, false, 3, 3, 4, 1, A, B, 0, c.data(), 3); },
            "cannot run");
  }
}

namespace {

// Operands for one case with every f32 input made a rounding tie for bf16 in one element of
// eight (low 16 bits 0x8000), so packers that round f32 to bf16 differently disagree.
struct Operands {
  Stored A, B;
  std::vector<float> C;
};

Stored with_ties(long rows, long cols, long pad, DType dtype) {
  Stored s(rows, cols, pad, dtype);
  for (size_t i = 0; dtype == DType::F32 && i < s.f32.size(); i += 8) {
    if (std::isnan(s.f32[i])) continue;
    uint32_t bits;
    std::memcpy(&bits, &s.f32[i], 4);
    bits = (bits & 0xffff0000u) | 0x8000u;
    std::memcpy(&s.f32[i], &bits, 4);
  }
  return s;
}

std::vector<float> product_on(CpuPath path, const Case& c, const Operands& in) {
  std::vector<float> C = in.C;
  cpu::detail::gemm_on_path(path, c.trans_a, c.trans_b, c.M, c.N, c.K, c.alpha, in.A.matrix(), in.B.matrix(),
                            c.beta, C.data(), c.N);
  return C;
}

// Shapes past one 12 x 32 / 8 x 32 tile in every direction, K across several 256-deep blocks and
// two packed passes (f32: 1700; bf16: 2113), not a multiple of 32 (the vector packers' tail),
// odd K (half a bf16 pair), N across the 768-wide B blocks of the few-rows case (1700).
constexpr Shape kBitwiseShapes[] = {{13, 35, 33},  {37, 19, 300},  {150, 70, 300}, {31, 45, 517},
                                    {200, 97, 64}, {64, 96, 1700}, {25, 300, 70},  {27, 45, 2113},
                                    {20, 1700, 91}};

// `path` gives exactly `reference`'s bits on every transpose and dtype pair whose compute mode
// (f32 or bf16) is `bf16_mode`.
void expect_bitwise_equal(CpuPath path, CpuPath reference, bool bf16_mode, const char* test) {
  if (!cpu_path_supported(path)) {
    std::printf("     %s: %s path skipped (CPU features: %s)\n", test, cpu_path_name(path),
                cpu_features_string().c_str());
    return;
  }
  uint32_t seed = 0;
  for (const Shape& s : kBitwiseShapes) {
    for (const auto& dtypes : kDtypePairs) {
      const bool bf16_compute = dtypes[0] == DType::BF16 || dtypes[1] == DType::BF16;
      if (bf16_compute != bf16_mode) continue;
      for (int trans = 0; trans < 4; ++trans, ++seed) {
        const auto& ab = kAlphaBeta[seed % 3];
        const Case c{s.M, s.N, s.K, bool(trans & 1), bool(trans & 2), dtypes[0], dtypes[1], ab[0], ab[1],
                     seed % 2 ? 3L : 0L};
        const Operands in{with_ties(c.trans_a ? c.K : c.M, c.trans_a ? c.M : c.K, c.pad, c.a_dtype),
                          with_ties(c.trans_b ? c.N : c.K, c.trans_b ? c.K : c.N, c.pad, c.b_dtype),
                          test::random_f32(size_t(c.M * c.N))};
        const std::vector<float> got = product_on(path, c, in), want = product_on(reference, c, in);
        for (size_t i = 0; i < got.size(); ++i) {
          if (std::memcmp(&got[i], &want[i], 4) != 0)
            fail("element ", i, ": ", got[i], " vs ", want[i], " on ", cpu_path_name(reference), ": ",
                 describe(path, c));
        }
      }
    }
  }
}

}  // namespace

// The 512-bit f32 kernel does the AVX2 kernel's FMAs in the same order: the same bits.
ZN_TEST("gemm.avx512_f32_equals_avx2_bitwise") {
  expect_bitwise_equal(CpuPath::Avx512Bf16, CpuPath::Avx2, false, "gemm.avx512_f32_equals_avx2_bitwise");
}

// The AVX-512 packers and vdpbf16ps against the scalar packers and the scalar mirror of
// vdpbf16ps on the same Bf16Pairs blocking: the same bits (rounding ties included), so the
// scalar path tests everything around the instruction.
ZN_TEST("gemm.avx512bf16_equals_scalar_pairs_bitwise") {
  expect_bitwise_equal(CpuPath::Avx512Bf16, CpuPath::Scalar, true, "gemm.avx512bf16_equals_scalar_pairs_bitwise");
}
