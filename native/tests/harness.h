// A minimal test harness for the native core (no third-party framework to fetch): tests
// register themselves with ZN_TEST, checks throw, and helpers make random inputs, poison
// outputs and compare against float64 references with tolerances stated in one place.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/errors.h"

namespace zn::test {

// Tolerances, by the precision of the kernel's inputs (see ../shared/DESIGN.md, Numerics).
// Relative error is ||out - ref|| / ||ref|| over the whole tensor.
constexpr double kF32RelTol = 1e-5;
constexpr double kBf16RelTol = 1e-2;
// Finite-difference checks of float64 references: central differences with this step.
constexpr double kFdStep = 1e-6;
constexpr double kFdRelTol = 1e-6;

struct TestCase {
  std::string name;
  std::function<void()> body;
};

std::vector<TestCase>& registry();

struct Register {
  Register(const char* name, std::function<void()> body) {
    registry().push_back({name, std::move(body)});
  }
};

#define ZN_TEST_CONCAT2(a, b) a##b
#define ZN_TEST_CONCAT(a, b) ZN_TEST_CONCAT2(a, b)
#define ZN_TEST(name)                                                            \
  static void ZN_TEST_CONCAT(zn_test_body_, __LINE__)();                         \
  static ::zn::test::Register ZN_TEST_CONCAT(zn_test_reg_, __LINE__)(name,       \
      ZN_TEST_CONCAT(zn_test_body_, __LINE__));                                  \
  static void ZN_TEST_CONCAT(zn_test_body_, __LINE__)()

#define EXPECT(cond, ...)                                                             \
  do {                                                                                \
    if (!(cond)) ::zn::fail(__FILE__, ":", __LINE__, ": expected ", #cond, " ", ##__VA_ARGS__); \
  } while (0)

// A fresh random stream per test run; the seed is printed so a failure can be replayed
// (ZN_TEST_SEED=<n>).
std::mt19937_64& rng();

std::vector<float> random_f32(size_t n, float scale = 1.0f);
std::vector<double> to_f64(const std::vector<float>& v);
std::vector<bf16> to_bf16(const std::vector<float>& v);
// Rounds each value to bf16 and back, so a float64 reference sees exactly the kernel's inputs.
std::vector<float> round_bf16(const std::vector<float>& v);
void poison(std::vector<float>& v);

// ||a - b|| / max(||b||, tiny); NaN anywhere in a gives infinity.
double rel_error(const std::vector<float>& a, const std::vector<double>& b);
double rel_error(const std::vector<double>& a, const std::vector<double>& b);

// Throws with a readable message when rel_error(out, ref) > tol.
void expect_close(const std::vector<float>& out, const std::vector<double>& ref, double tol,
                  const std::string& what);
void expect_close(const std::vector<double>& out, const std::vector<double>& ref, double tol,
                  const std::string& what);

// Runs f and expects a zn::Error whose message contains `needle`.
void expect_error(const std::function<void()>& f, const std::string& needle);

// Central-difference gradient of a scalar float64 function f at x.
std::vector<double> finite_difference(const std::function<double(const std::vector<double>&)>& f,
                                      std::vector<double> x, double step = kFdStep);

}  // namespace zn::test
