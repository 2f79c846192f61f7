// Runs the registered native tests. Usage: zn_tests [name-prefix]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>

#include "harness.h"

namespace zn::test {

std::vector<TestCase>& registry() {
  static std::vector<TestCase> cases;
  return cases;
}

std::mt19937_64& rng() {
  static std::mt19937_64 engine = [] {
    const char* fixed = std::getenv("ZN_TEST_SEED");
    const uint64_t seed = fixed ? std::strtoull(fixed, nullptr, 10)
                                : uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
    std::printf("ZN_TEST_SEED=%llu\n", static_cast<unsigned long long>(seed));
    return std::mt19937_64(seed);
  }();
  return engine;
}

std::vector<float> random_f32(size_t n, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng());
  return v;
}

std::vector<double> to_f64(const std::vector<float>& v) { return {v.begin(), v.end()}; }

std::vector<bf16> to_bf16(const std::vector<float>& v) {
  std::vector<bf16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = f32_to_bf16(v[i]);
  return out;
}

std::vector<float> round_bf16(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_f32(f32_to_bf16(v[i]));
  return out;
}

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT(std::string(e.what()).find(needle) != std::string::npos, "error '", e.what(), "' lacks '", needle, "'");
    return;
  }
  fail("expected an error mentioning '", needle, "'");
}

void poison(std::vector<float>& v) {
  for (float& x : v) x = std::nanf("");
}

template <typename T>
static double rel_error_impl(const std::vector<T>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return INFINITY;
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(double(a[i]))) return INFINITY;
    const double d = double(a[i]) - b[i];
    diff += d * d;
    norm += b[i] * b[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

double rel_error(const std::vector<float>& a, const std::vector<double>& b) { return rel_error_impl(a, b); }
double rel_error(const std::vector<double>& a, const std::vector<double>& b) { return rel_error_impl(a, b); }

template <typename T>
static void expect_close_impl(const std::vector<T>& out, const std::vector<double>& ref, double tol,
                              const std::string& what) {
  const double err = rel_error(out, ref);
  if (!(err <= tol)) {
    std::ostringstream message;
    message << what << ": relative error " << err << " exceeds " << tol << " (" << out.size()
            << " values vs " << ref.size() << " reference)";
    throw Error(message.str());
  }
}

void expect_close(const std::vector<float>& out, const std::vector<double>& ref, double tol,
                  const std::string& what) {
  expect_close_impl(out, ref, tol, what);
}
void expect_close(const std::vector<double>& out, const std::vector<double>& ref, double tol,
                  const std::string& what) {
  expect_close_impl(out, ref, tol, what);
}

std::vector<double> finite_difference(const std::function<double(const std::vector<double>&)>& f,
                                      std::vector<double> x, double step) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + step;
    const double up = f(x);
    x[i] = saved - step;
    const double down = f(x);
    x[i] = saved;
    grad[i] = (up - down) / (2 * step);
  }
  return grad;
}

}  // namespace zn::test

int main(int argc, char** argv) {
  const char* prefix = argc > 1 ? argv[1] : "";
  int passed = 0, failed = 0;
  zn::test::rng();
  for (const auto& test : zn::test::registry()) {
    if (std::strncmp(test.name.c_str(), prefix, std::strlen(prefix)) != 0) continue;
    const auto start = std::chrono::steady_clock::now();
    try {
      test.body();
      ++passed;
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      std::printf("ok   %s (%.0f ms)\n", test.name.c_str(), ms);
    } catch (const std::exception& e) {
      ++failed;
      std::printf("FAIL %s\n     %s\n", test.name.c_str(), e.what());
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  if (passed + failed == 0) {
    std::printf("no test matches '%s'\n", prefix);
    return 1;
  }
  return failed == 0 ? 0 : 1;
}
