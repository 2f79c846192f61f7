// AdamW over several steps against a float64 re-implementation of torch.optim.AdamW's update,
// the bf16 weight copy, the f64 sum of squares and the clipping coefficient.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

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
  // The AVX2 and AVX-512 loops claim torch's op order exactly as the scalar loop has it: every
  // output bit equal, with and without weight decay, on both sides of torch's lerp switch
  // (weight 1 - b1 below and above 0.5), clipped and not, with a tail that is not a multiple of
  // 16, from an unaligned start, and with values whose bf16 rounding is tricky: denormals
  // (which vcvtneps2bf16 would flush), halfway cases, zeros of both signs, the f32 maximum, a
  // NaN gradient.
  std::vector<CpuPath> paths;
  if (cpu_features().avx2 && cpu_features().fma) paths.push_back(CpuPath::Avx2);
  if (cpu_features().avx512f && cpu_features().avx512bw && cpu_features().avx512bf16) paths.push_back(CpuPath::Avx512Bf16);
  const long n = 4099;
  for (const long start : {0L, 3L}) {
    for (const double beta1 : {0.9, 0.3}) {
      for (const double wd : {0.0, 0.1}) {
        for (const float scale : {1.0f, 0.37f}) {
          auto param0 = random_f32(n), m0 = random_f32(n, 1e-3f), grad = random_f32(n, 1e-2f);
          auto v0 = random_f32(n, 1e-5f);
          for (float& x : v0) x = std::fabs(x);
          const float tricky[] = {1e-40f, -3e-39f, 0.0f, -0.0f, 3.4e38f, 1.00390625f, -1.01171875f, 1e-38f};
          for (long i = 0; i < 64; ++i) param0[size_t(40 * i + 5)] = tricky[i % 8];
          grad[17] = std::nanf("");
          const cpu::AdamWStep hp{1e-3, beta1, 0.999, 1e-8, wd, 7, scale};
          struct State {
            std::vector<float> p, m, v;
            std::vector<bf16> copy;
          };
          const State initial{param0, m0, v0, std::vector<bf16>(n)};
          State s = initial;
          const long k = n - start;
          cpu::adamw_update(k, hp, s.p.data() + start, grad.data() + start, s.m.data() + start, s.v.data() + start,
                            s.copy.data() + start, CpuPath::Scalar);
          for (const CpuPath path : paths) {
            State a = initial;
            cpu::adamw_update(k, hp, a.p.data() + start, grad.data() + start, a.m.data() + start, a.v.data() + start,
                              a.copy.data() + start, path);
            const std::string what = std::string(cpu_path_name(path)) + " start " + std::to_string(start) + " beta1 " +
                                     std::to_string(beta1) + " wd " + std::to_string(wd) + " scale " + std::to_string(scale);
            EXPECT(std::memcmp(s.p.data(), a.p.data(), n * 4) == 0, "params differ: ", what);
            EXPECT(std::memcmp(s.m.data(), a.m.data(), n * 4) == 0, "exp_avg differs: ", what);
            EXPECT(std::memcmp(s.v.data(), a.v.data(), n * 4) == 0, "exp_avg_sq differs: ", what);
            EXPECT(std::memcmp(s.copy.data(), a.copy.data(), n * 2) == 0, "bf16 copies differ: ", what);
          }
        }
      }
    }
  }
}

ZN_TEST("adamw.bf16_copy_rounds_tricky_values_as_f32_to_bf16") {
  // The copy of each path against the scalar rounding rule, on weights that the step leaves
  // as they are (lr 0): denormals kept (not flushed), ties to even, NaN quieted, infinities.
  const std::vector<float> values{1e-40f, -3e-39f, 0.0f, -0.0f, 1.00390625f, 1.01171875f, -1.01171875f,
                                  std::numeric_limits<float>::infinity(), -3.4e38f, std::nanf(""), 7.0f,
                                  1e-45f, -1.1754942e-38f, 65504.0f, 0.1f, 3.0e38f, 2.5f};
  const long n = long(values.size());
  std::vector<CpuPath> paths{CpuPath::Scalar};
  if (cpu_features().avx2 && cpu_features().fma) paths.push_back(CpuPath::Avx2);
  if (cpu_features().avx512f && cpu_features().avx512bw && cpu_features().avx512bf16) paths.push_back(CpuPath::Avx512Bf16);
  for (const CpuPath path : paths) {
    std::vector<float> p = values, m(size_t(n), 0.0f), v(size_t(n), 0.0f), grad(size_t(n), 0.0f);
    std::vector<bf16> copy(static_cast<size_t>(n));
    cpu::adamw_update(n, {0.0, 0.9, 0.999, 1e-8, 0.0, 1, 1.0f}, p.data(), grad.data(), m.data(), v.data(),
                      copy.data(), path);
    for (long i = 0; i < n; ++i) {
      // Round to nearest even by hand, in 64-bit integers.
      uint32_t u;
      std::memcpy(&u, &values[size_t(i)], 4);
      const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
      const uint16_t want = nan ? uint16_t((u >> 16) | 0x40) : uint16_t((uint64_t(u) + 0x7fffu + ((u >> 16) & 1u)) >> 16);
      EXPECT(copy[size_t(i)].bits == want, cpu_path_name(path), " value ", values[size_t(i)], " got ", copy[size_t(i)].bits,
             " want ", want);
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
