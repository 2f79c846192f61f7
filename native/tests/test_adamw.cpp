// AdamW over several steps against a float64 re-implementation of torch.optim.AdamW's update,
// the bf16 weight copy, the f64 sum of squares and the clipping coefficient.
#include <cmath>
#include <cstring>

#include "harness.h"
#include "kernels/cpu/adamw.h"

using namespace zn;
using namespace zn::test;

namespace {

struct State64 {
  std::vector<double> p, m, v;
};

// torch.optim.AdamW (decoupled decay, bias correction), in float64.
void adamw_f64(const cpu::AdamWStep& hp, const std::vector<float>& grad, State64& s) {
  const double t = double(hp.step);
  const double bc1 = 1 - std::pow(hp.beta1, t), bc2 = 1 - std::pow(hp.beta2, t);
  for (size_t i = 0; i < s.p.size(); ++i) {
    const double g = double(grad[i]) * double(hp.grad_scale);
    s.p[i] *= 1 - hp.lr * hp.weight_decay;
    s.m[i] = hp.beta1 * s.m[i] + (1 - hp.beta1) * g;
    s.v[i] = hp.beta2 * s.v[i] + (1 - hp.beta2) * g * g;
    const double denom = std::sqrt(s.v[i]) / std::sqrt(bc2) + hp.eps;
    s.p[i] -= hp.lr / bc1 * s.m[i] / denom;
  }
}

void poison_bf16(std::vector<bf16>& v) {
  for (auto& x : v) x.bits = 0x7fc1;  // a NaN no finite weight rounds to
}

void check_run(long n, cpu::AdamWStep hp, int steps) {
  const std::string what = "n=" + std::to_string(n) + " lr=" + std::to_string(hp.lr) + " b1=" +
                           std::to_string(hp.beta1) + " wd=" + std::to_string(hp.weight_decay);
  auto param = random_f32(n, 0.05f);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  std::vector<bf16> param_bf16(n);
  State64 trajectory{to_f64(param), std::vector<double>(n, 0.0), std::vector<double>(n, 0.0)};
  for (int step = 1; step <= steps; ++step) {
    hp.step = step;
    const auto grad = random_f32(n, 1e-2f);
    // One-step reference from exactly the kernel's current state: the update itself must be
    // right to f32 precision, not just the (much larger) weights.
    State64 one{to_f64(param), to_f64(m), to_f64(v)};
    const auto before = one.p;
    adamw_f64(hp, grad, one);
    adamw_f64(hp, grad, trajectory);

    poison_bf16(param_bf16);
    cpu::adamw_update(n, hp, param.data(), grad.data(), m.data(), v.data(), param_bf16.data());
    const std::string at = what + " step " + std::to_string(step);
    std::vector<float> update(n);
    std::vector<double> update_ref(n);
    for (long i = 0; i < n; ++i) {
      update[i] = float(double(param[i]) - before[i]);
      update_ref[i] = one.p[i] - before[i];
    }
    expect_close(update, update_ref, kF32RelTol, "adamw update " + at);
    expect_close(m, one.m, kF32RelTol, "adamw m " + at);
    expect_close(v, one.v, kF32RelTol, "adamw v " + at);
    for (long i = 0; i < n; ++i)
      EXPECT(param_bf16[i].bits == f32_to_bf16(param[i]).bits, at, " bf16 copy at ", i);
  }
  // Independently run float64 trajectory: the f32 state has not drifted over the steps.
  expect_close(param, trajectory.p, kF32RelTol, "adamw weights after " + std::to_string(steps) + " steps " + what);
  expect_close(m, trajectory.m, kF32RelTol, "adamw m after steps " + what);
  expect_close(v, trajectory.v, kF32RelTol, "adamw v after steps " + what);
}

}  // namespace

ZN_TEST("adamw.steps_match_float64_torch_formula") {
  check_run(37, {1e-2, 0.9, 0.999, 1e-8, 0.1, 1, 1.0f}, 6);
  check_run(1000, {3e-3, 0.9, 0.95, 1e-6, 0.0, 1, 0.37f}, 5);  // clipping scale, no decay
  check_run(501, {1e-2, 0.3, 0.99, 1e-8, 0.01, 1, 1.0f}, 4);    // lerp weight >= 0.5 branch
  check_run(100003, {1e-2, 0.9, 0.999, 1e-8, 0.05, 1, 0.8f}, 3);  // threaded
}

ZN_TEST("adamw.without_bf16_copy_and_bad_step") {
  const long n = 5;
  auto param = random_f32(n, 0.05f);
  std::vector<float> m(n, 0.0f), v(n, 0.0f);
  const auto grad = random_f32(n, 1e-2f);
  State64 ref{to_f64(param), std::vector<double>(n, 0.0), std::vector<double>(n, 0.0)};
  const cpu::AdamWStep hp{1e-2, 0.9, 0.999, 1e-8, 0.0, 1, 1.0f};
  cpu::adamw_update(n, hp, param.data(), grad.data(), m.data(), v.data(), nullptr);
  adamw_f64(hp, grad, ref);
  expect_close(param, ref.p, kF32RelTol, "adamw without bf16 copy");
  bool caught = false;
  try {
    cpu::adamw_update(n, {1e-2, 0.9, 0.999, 1e-8, 0.0, 0, 1.0f}, param.data(), grad.data(), m.data(),
                      v.data(), nullptr);
  } catch (const Error& e) {
    caught = std::string(e.what()).find("step") != std::string::npos;
  }
  EXPECT(caught);
}

ZN_TEST("adamw.every_path_gives_the_scalar_bits") {
  // The AVX2 loop claims torch's op order exactly as the scalar loop has it: every output bit
  // equal, with and without weight decay, on both sides of torch's lerp switch (weight 1 - b1
  // below and above 0.5), clipped and not, with a tail that is not a multiple of 8.
  if (!(cpu_features().avx2 && cpu_features().fma)) return;
  const long n = 4099;
  for (const double beta1 : {0.9, 0.3}) {
    for (const double wd : {0.0, 0.1}) {
      for (const float scale : {1.0f, 0.37f}) {
        const auto param0 = random_f32(n), m0 = random_f32(n, 1e-3f), grad = random_f32(n, 1e-2f);
        auto v0 = random_f32(n, 1e-5f);
        for (float& x : v0) x = std::fabs(x);
        const cpu::AdamWStep hp{1e-3, beta1, 0.999, 1e-8, wd, 7, scale};
        struct State {
          std::vector<float> p, m, v;
          std::vector<bf16> copy;
        };
        State s{param0, m0, v0, std::vector<bf16>(n)}, a = s;
        cpu::adamw_update(n, hp, s.p.data(), grad.data(), s.m.data(), s.v.data(), s.copy.data(), CpuPath::Scalar);
        cpu::adamw_update(n, hp, a.p.data(), grad.data(), a.m.data(), a.v.data(), a.copy.data(), CpuPath::Avx2);
        const std::string what = "beta1 " + std::to_string(beta1) + " wd " + std::to_string(wd) +
                                 " scale " + std::to_string(scale);
        EXPECT(std::memcmp(s.p.data(), a.p.data(), n * 4) == 0, "params differ: ", what);
        EXPECT(std::memcmp(s.m.data(), a.m.data(), n * 4) == 0, "exp_avg differs: ", what);
        EXPECT(std::memcmp(s.v.data(), a.v.data(), n * 4) == 0, "exp_avg_sq differs: ", what);
        EXPECT(std::memcmp(s.copy.data(), a.copy.data(), n * 2) == 0, "bf16 copies differ: ", what);
      }
    }
  }
}

ZN_TEST("adamw.sum_of_squares_in_f64") {
  for (long n : {0L, 1L, 7L, 65536L * 3 + 5}) {
    const auto grad = random_f32(n, 3.0f);
    double ref = 0;
    for (float g : grad) ref += double(g) * double(g);
    const double got = cpu::sum_of_squares(n, grad.data());
    EXPECT(std::fabs(got - ref) <= 1e-12 * std::max(ref, 1e-300), "n=", n, " got ", got, " want ", ref);
  }
  // Values whose squares overflow f32 are fine in f64.
  std::vector<float> big{3e20f, -4e20f};
  EXPECT(std::fabs(cpu::sum_of_squares(2, big.data()) / 25e40 - 1) < 1e-6);
}

ZN_TEST("adamw.clip_coefficient_as_torch") {
  EXPECT(cpu::clip_coefficient(10.0, 1.0) == float(1.0 / (10.0 + 1e-6)));
  EXPECT(cpu::clip_coefficient(0.5, 1.0) == 1.0f);
  EXPECT(cpu::clip_coefficient(123.0, 0.0) == 1.0f);  // max_grad_norm 0: no clipping
}
