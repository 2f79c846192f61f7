// SwiGLU against float64 on every SIMD path this CPU runs: forward, analytic backward, finite
// differences, extreme gates, outputs written over inputs.
#include <cmath>

#include "core/cpu_features.h"
#include "harness.h"
#include "kernels/cpu/swiglu.h"

using namespace zn;
using namespace zn::test;

namespace {

std::vector<CpuPath> paths() {
  std::vector<CpuPath> p{CpuPath::Scalar};
  if (cpu_features().avx2 && cpu_features().fma) p.push_back(CpuPath::Avx2);
  return p;
}

double silu_f64(double g) { return g / (1.0 + std::exp(-g)); }

// d silu / dg = s + g s (1 - s), written from the quotient rule on g / (1 + e^-g).
double dsilu_f64(double g) {
  const double e = std::exp(-g);
  return 1.0 / (1.0 + e) + g * e / ((1.0 + e) * (1.0 + e));
}

void check_case(CpuPath path, long n, float gate_scale, bool finite_differences) {
  const std::string what = std::string(cpu_path_name(path)) + " n=" + std::to_string(n) +
                           " scale=" + std::to_string(gate_scale);
  const auto gate = random_f32(n, gate_scale), up = random_f32(n), dout = random_f32(n);
  std::vector<float> out(n), dgate(n), dup(n);
  poison(out);
  poison(dgate);
  poison(dup);
  cpu::swiglu_forward(n, gate.data(), up.data(), out.data(), path);
  cpu::swiglu_backward(n, gate.data(), up.data(), dout.data(), dgate.data(), dup.data(), path);

  std::vector<double> out_ref(n), dgate_ref(n), dup_ref(n);
  for (long i = 0; i < n; ++i) {
    out_ref[i] = silu_f64(gate[i]) * up[i];
    dgate_ref[i] = double(dout[i]) * up[i] * dsilu_f64(gate[i]);
    dup_ref[i] = double(dout[i]) * silu_f64(gate[i]);
  }
  expect_close(out, out_ref, kF32RelTol, "swiglu out " + what);
  expect_close(dgate, dgate_ref, kF32RelTol, "swiglu dgate " + what);
  expect_close(dup, dup_ref, kF32RelTol, "swiglu dup " + what);

  if (!finite_differences) return;
  // L = sum(dout * silu(g) * u), differentiated numerically in g and in u.
  const auto gd = to_f64(gate), ud = to_f64(up), dd = to_f64(dout);
  auto loss = [&](const std::vector<double>& g, const std::vector<double>& u) {
    double s = 0;
    for (long i = 0; i < n; ++i) s += dd[i] * silu_f64(g[i]) * u[i];
    return s;
  };
  expect_close(dgate_ref, finite_difference([&](const std::vector<double>& g) { return loss(g, ud); }, gd),
               kFdRelTol, "swiglu analytic dgate vs finite differences " + what);
  expect_close(dup_ref, finite_difference([&](const std::vector<double>& u) { return loss(gd, u); }, ud),
               kFdRelTol, "swiglu analytic dup vs finite differences " + what);
}

}  // namespace

ZN_TEST("swiglu.forward_backward") {
  for (CpuPath path : paths()) {
    check_case(path, 1, 1.0f, true);
    check_case(path, 37, 2.0f, true);
    check_case(path, 100003, 3.0f, false);  // threaded, a partial last vector
    check_case(path, 999, 30.0f, false);    // saturated sigmoids on both sides
  }
}

ZN_TEST("swiglu.extreme_gates_stay_finite") {
  // exp(-g) overflows f32 for g < -88: the stable sigmoid must still give silu -> -0, no NaN.
  std::vector<float> gate{-1000.0f, -100.0f, -89.0f, 89.0f, 100.0f, 1000.0f};
  const long n = long(gate.size());
  std::vector<float> up(n, 2.0f), dout(n, 1.0f), out(n), dgate(n), dup(n);
  for (CpuPath path : paths()) {
    cpu::swiglu_forward(n, gate.data(), up.data(), out.data(), path);
    cpu::swiglu_backward(n, gate.data(), up.data(), dout.data(), dgate.data(), dup.data(), path);
    for (long i = 0; i < n; ++i) {
      EXPECT(std::isfinite(out[i]) && std::isfinite(dgate[i]) && std::isfinite(dup[i]),
             cpu_path_name(path), " gate ", gate[i]);
      const double ref = silu_f64(gate[i]) * 2.0;
      EXPECT(std::fabs(out[i] - ref) <= 1e-6 * std::max(1.0, std::fabs(ref)), cpu_path_name(path),
             " gate ", gate[i], " out ", out[i]);
    }
  }
}

ZN_TEST("swiglu.in_place_equals_separate_outputs") {
  // The model's backward writes dgate over gate and dup over up, and an inference forward may
  // write out over gate: the bits must be those of separate outputs. n spans several threads.
  const long n = 50001;
  const auto gate = random_f32(n, 4.0f), up = random_f32(n), dout = random_f32(n);
  for (CpuPath path : paths()) {
    std::vector<float> out(n), dgate(n), dup(n);
    cpu::swiglu_forward(n, gate.data(), up.data(), out.data(), path);
    cpu::swiglu_backward(n, gate.data(), up.data(), dout.data(), dgate.data(), dup.data(), path);

    std::vector<float> g = gate, u = up;
    cpu::swiglu_backward(n, g.data(), u.data(), dout.data(), g.data(), u.data(), path);
    EXPECT(g == dgate, cpu_path_name(path), ": dgate written over gate differs from a separate dgate");
    EXPECT(u == dup, cpu_path_name(path), ": dup written over up differs from a separate dup");
    g = gate;
    cpu::swiglu_forward(n, g.data(), up.data(), g.data(), path);
    EXPECT(g == out, cpu_path_name(path), ": out written over gate differs from a separate out");
  }
}
