// RMSNorm against a float64 reference: forward, analytic backward, and finite differences.
#include <cmath>
#include <cstring>
#include <utility>

#include "harness.h"
#include "kernels/cpu/rmsnorm.h"

using namespace zn;
using namespace zn::test;

namespace {

struct Reference {
  std::vector<double> y, rstd;
};

Reference rmsnorm_f64(long rows, long dim, double eps, const std::vector<double>& x,
                      const std::vector<double>& w) {
  Reference out{std::vector<double>(rows * dim), std::vector<double>(rows)};
  for (long i = 0; i < rows; ++i) {
    double squares = 0;
    for (long j = 0; j < dim; ++j) squares += x[i * dim + j] * x[i * dim + j];
    const double r = 1.0 / std::sqrt(squares / dim + eps);
    out.rstd[i] = r;
    for (long j = 0; j < dim; ++j) out.y[i * dim + j] = w[j] * x[i * dim + j] * r;
  }
  return out;
}

// Gradients of L = sum(dy * y) written out by hand.
void rmsnorm_backward_f64(long rows, long dim, double eps, const std::vector<double>& x,
                          const std::vector<double>& w, const std::vector<double>& dy,
                          std::vector<double>& dx, std::vector<double>& dw) {
  dx.assign(rows * dim, 0.0);
  dw.assign(dim, 0.0);
  for (long i = 0; i < rows; ++i) {
    double squares = 0;
    for (long j = 0; j < dim; ++j) squares += x[i * dim + j] * x[i * dim + j];
    const double r = 1.0 / std::sqrt(squares / dim + eps);
    double dot = 0;
    for (long j = 0; j < dim; ++j) dot += w[j] * dy[i * dim + j] * x[i * dim + j];
    for (long j = 0; j < dim; ++j) {
      dx[i * dim + j] = r * w[j] * dy[i * dim + j] - r * r * r * dot / dim * x[i * dim + j];
      dw[j] += dy[i * dim + j] * x[i * dim + j] * r;
    }
  }
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

void check_case(long rows, long dim, float eps, bool finite_differences) {
  const std::string shape = "rows=" + std::to_string(rows) + " dim=" + std::to_string(dim);
  const auto x = random_f32(rows * dim, 1.5f);
  auto w = random_f32(dim);
  for (float& v : w) v += 1.0f;
  const auto dy = random_f32(rows * dim);

  std::vector<float> y(rows * dim), rstd(rows);
  poison(y);
  poison(rstd);
  cpu::rmsnorm_forward(rows, dim, eps, x.data(), w.data(), y.data(), rstd.data());
  const auto ref = rmsnorm_f64(rows, dim, eps, to_f64(x), to_f64(w));
  expect_close(y, ref.y, kF32RelTol, "rmsnorm y " + shape);
  expect_close(rstd, ref.rstd, kF32RelTol, "rmsnorm rstd " + shape);

  // dweight is accumulated into: start from a random value and expect start + gradient.
  const auto dweight_start = random_f32(dim);
  std::vector<float> dx(rows * dim), dweight = dweight_start;
  poison(dx);
  cpu::rmsnorm_backward(rows, dim, x.data(), w.data(), rstd.data(), dy.data(), dx.data(),
                        dweight.data());
  std::vector<double> dx_ref, dw_ref;
  rmsnorm_backward_f64(rows, dim, eps, to_f64(x), to_f64(w), to_f64(dy), dx_ref, dw_ref);
  expect_close(dx, dx_ref, kF32RelTol, "rmsnorm dx " + shape);
  std::vector<double> dweight_expected(dim);
  for (long j = 0; j < dim; ++j) dweight_expected[j] = dweight_start[j] + dw_ref[j];
  expect_close(dweight, dweight_expected, kF32RelTol, "rmsnorm dweight " + shape);

  if (!finite_differences) return;
  const auto xd = to_f64(x), wd = to_f64(w), dyd = to_f64(dy);
  const auto dx_fd = finite_difference(
      [&](const std::vector<double>& xv) { return dot(rmsnorm_f64(rows, dim, eps, xv, wd).y, dyd); }, xd);
  const auto dw_fd = finite_difference(
      [&](const std::vector<double>& wv) { return dot(rmsnorm_f64(rows, dim, eps, xd, wv).y, dyd); }, wd);
  expect_close(dx_ref, dx_fd, kFdRelTol, "rmsnorm analytic dx vs finite differences " + shape);
  expect_close(dw_ref, dw_fd, kFdRelTol, "rmsnorm analytic dw vs finite differences " + shape);
}

}  // namespace

ZN_TEST("rmsnorm.small_shapes_with_finite_differences") {
  check_case(2, 3, 1e-6f, true);
  check_case(3, 5, 1e-6f, true);
  check_case(5, 37, 1e-5f, true);
}

ZN_TEST("rmsnorm.threaded_shapes") {
  // Enough rows and columns that both passes split across threads.
  check_case(301, 129, 1e-6f, false);
  check_case(17, 4099, 1e-5f, false);
}

ZN_TEST("rmsnorm.apply_with_saved_rstd_is_the_forward_bit_for_bit") {
  // The model recomputes normalised activations in backward from the saved rstd; its gradients
  // stay bit-identical only if these values are exactly the forward's.
  for (const auto& [rows, dim] : {std::pair<long, long>{3, 5}, {301, 129}, {17, 4099}}) {
    const auto x = random_f32(rows * dim, 3.0f);
    auto w = random_f32(dim);
    for (float& v : w) v += 1.0f;
    std::vector<float> y(rows * dim), rstd(rows), again(rows * dim);
    cpu::rmsnorm_forward(rows, dim, 1e-5f, x.data(), w.data(), y.data(), rstd.data());
    poison(again);
    cpu::rmsnorm_apply(rows, dim, x.data(), w.data(), rstd.data(), again.data());
    EXPECT(std::memcmp(again.data(), y.data(), y.size() * sizeof(float)) == 0, "rows=", rows,
           " dim=", dim);
    const auto ref = rmsnorm_f64(rows, dim, 1e-5, to_f64(x), to_f64(w));
    expect_close(again, ref.y, kF32RelTol, "rmsnorm_apply y rows=" + std::to_string(rows));
  }
}

ZN_TEST("rmsnorm.tiny_values_are_guarded_by_eps") {
  // An all-zero row normalises to zero (rstd = eps^-1/2), as HF does; no NaN.
  const long dim = 8;
  std::vector<float> x(dim, 0.0f), w(dim, 1.0f), y(dim), rstd(1);
  poison(y);
  cpu::rmsnorm_forward(1, dim, 1e-6f, x.data(), w.data(), y.data(), rstd.data());
  for (float v : y) EXPECT(v == 0.0f);
  EXPECT(std::fabs(rstd[0] - 1000.0f) < 1e-3f, "rstd ", rstd[0]);
}
