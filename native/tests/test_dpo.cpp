// DPO losses, gradients and TRL metrics against float64 references and finite differences.
#include <cmath>

#include "harness.h"
#include "kernels/cpu/dpo.h"

using namespace zn;
using namespace zn::test;

namespace {

using cpu::DpoLossType;

struct Batch {
  std::vector<float> pc, pr, rc, rr;
  std::vector<int32_t> nc, nr;  // completion token counts
};

// Realistic magnitudes: summed log-probs in the hundreds, policy near the reference.
Batch random_batch(long pairs, float spread) {
  Batch b;
  std::uniform_real_distribution<float> logp(-300.0f, -20.0f);
  std::uniform_int_distribution<int32_t> tokens(0, 40);  // 0 is clamped to 1, as TRL does
  const auto noise_c = random_f32(pairs, spread), noise_r = random_f32(pairs, spread);
  for (long i = 0; i < pairs; ++i) {
    b.rc.push_back(logp(rng()));
    b.rr.push_back(logp(rng()));
    b.pc.push_back(b.rc[i] + noise_c[i]);
    b.pr.push_back(b.rr[i] + noise_r[i]);
    b.nc.push_back(tokens(rng()));
    b.nr.push_back(tokens(rng()));
  }
  return b;
}

// The loss of one pair in float64, straight from the definitions (TRL's formulas).
double loss_f64(DpoLossType type, double beta, double ls, double pc, double pr, double rc, double rr,
                double nc, double nr) {
  const double chosen = pc - rc, rejected = pr - rr;
  const double z = beta * (chosen - rejected);
  switch (type) {
    case DpoLossType::Sigmoid:
      return -(1 - ls) * std::log(1 / (1 + std::exp(-z))) - ls * std::log(1 / (1 + std::exp(z)));
    case DpoLossType::Ipo: {
      const double d = chosen / std::max(nc, 1.0) - rejected / std::max(nr, 1.0) - 1 / (2 * beta);
      return d * d;
    }
    case DpoLossType::Hinge:
      return std::max(0.0, 1 - z);
  }
  return NAN;
}

// Analytic gradients in float64 (sigma(-z) = 1 - sigma(z) etc., derived independently of dpo.cpp).
void grad_f64(DpoLossType type, double beta, double ls, double pc, double pr, double rc, double rr,
              double nc, double nr, double& dpc, double& dpr) {
  const double z = beta * ((pc - rc) - (pr - rr));
  const double s = 1 / (1 + std::exp(-z));
  switch (type) {
    case DpoLossType::Sigmoid:
      dpc = beta * (-(1 - ls) * (1 - s) + ls * s);
      dpr = -dpc;
      return;
    case DpoLossType::Ipo: {
      nc = std::max(nc, 1.0);
      nr = std::max(nr, 1.0);
      const double d = (pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta);
      dpc = 2 * d / nc;
      dpr = -2 * d / nr;
      return;
    }
    case DpoLossType::Hinge:
      dpc = 1 - z > 0 ? -beta : 0.0;
      dpr = -dpc;
      return;
  }
}

const char* name(DpoLossType type) {
  return type == DpoLossType::Sigmoid ? "sigmoid" : type == DpoLossType::Ipo ? "ipo" : "hinge";
}

void check_case(DpoLossType type, long pairs, float beta, float ls, float spread, bool lengths) {
  const std::string what = std::string(name(type)) + " pairs=" + std::to_string(pairs) +
                           " beta=" + std::to_string(beta) + " ls=" + std::to_string(ls);
  const Batch b = random_batch(pairs, spread);
  std::vector<float> losses(pairs), dpc(pairs), dpr(pairs);
  poison(losses);
  poison(dpc);
  poison(dpr);
  const auto m = cpu::dpo_loss(pairs, type, beta, ls, b.pc.data(), b.pr.data(), b.rc.data(),
                               b.rr.data(), losses.data(), dpc.data(), dpr.data(),
                               lengths ? b.nc.data() : nullptr, lengths ? b.nr.data() : nullptr);

  std::vector<double> loss_ref(pairs), dpc_ref(pairs), dpr_ref(pairs);
  double loss_sum = 0, rc_sum = 0, rr_sum = 0, acc = 0, lpc = 0, lpr = 0;
  for (long i = 0; i < pairs; ++i) {
    const double nc = lengths ? b.nc[i] : 1, nr = lengths ? b.nr[i] : 1;
    loss_ref[i] = loss_f64(type, beta, ls, b.pc[i], b.pr[i], b.rc[i], b.rr[i], nc, nr);
    grad_f64(type, beta, ls, b.pc[i], b.pr[i], b.rc[i], b.rr[i], nc, nr, dpc_ref[i], dpr_ref[i]);
    // Finite differences of the float64 loss in each policy log-prob.
    auto in_pc = [&](const std::vector<double>& x) {
      return loss_f64(type, beta, ls, x[0], b.pr[i], b.rc[i], b.rr[i], nc, nr);
    };
    auto in_pr = [&](const std::vector<double>& x) {
      return loss_f64(type, beta, ls, b.pc[i], x[0], b.rc[i], b.rr[i], nc, nr);
    };
    const double fd_pc = finite_difference(in_pc, {double(b.pc[i])}, 1e-4)[0];
    const double fd_pr = finite_difference(in_pr, {double(b.pr[i])}, 1e-4)[0];
    EXPECT(std::fabs(fd_pc - dpc_ref[i]) <= 1e-6 * std::max(1.0, std::fabs(dpc_ref[i])) &&
               std::fabs(fd_pr - dpr_ref[i]) <= 1e-6 * std::max(1.0, std::fabs(dpr_ref[i])),
           what, " pair ", i, ": analytic (", dpc_ref[i], ", ", dpr_ref[i], ") vs finite differences (",
           fd_pc, ", ", fd_pr, ")");
    const double reward_c = beta * (double(b.pc[i]) - b.rc[i]), reward_r = beta * (double(b.pr[i]) - b.rr[i]);
    loss_sum += loss_ref[i];
    rc_sum += reward_c;
    rr_sum += reward_r;
    acc += reward_c > reward_r;
    lpc += b.pc[i];
    lpr += b.pr[i];
  }
  expect_close(losses, loss_ref, kF32RelTol, "dpo losses " + what);
  expect_close(dpc, dpc_ref, kF32RelTol, "dpo dpolicy_chosen " + what);
  expect_close(dpr, dpr_ref, kF32RelTol, "dpo dpolicy_rejected " + what);
  const double n = double(pairs);
  expect_close(std::vector<double>{m.loss_mean, m.rewards_chosen, m.rewards_rejected, m.rewards_margins,
                                   m.logps_chosen, m.logps_rejected},
               {loss_sum / n, rc_sum / n, rr_sum / n, (rc_sum - rr_sum) / n, lpc / n, lpr / n},
               kF32RelTol, "dpo metrics " + what);
  EXPECT(std::fabs(m.rewards_accuracies - acc / n) < 1e-12, what, " accuracies ", m.rewards_accuracies,
         " vs ", acc / n);
}

}  // namespace

ZN_TEST("dpo.sigmoid") {
  check_case(DpoLossType::Sigmoid, 1, 0.1f, 0.0f, 3.0f, false);
  check_case(DpoLossType::Sigmoid, 37, 0.1f, 0.0f, 3.0f, false);
  check_case(DpoLossType::Sigmoid, 37, 0.5f, 0.1f, 10.0f, false);  // cDPO smoothing
  check_case(DpoLossType::Sigmoid, 50, 2.0f, 0.3f, 30.0f, false);  // saturated pairs
}

ZN_TEST("dpo.ipo_with_and_without_token_counts") {
  check_case(DpoLossType::Ipo, 29, 0.1f, 0.0f, 20.0f, true);
  check_case(DpoLossType::Ipo, 29, 0.5f, 0.0f, 3.0f, false);
}

ZN_TEST("dpo.hinge") {
  // Spread so that pairs fall on both sides of the hinge.
  check_case(DpoLossType::Hinge, 41, 0.1f, 0.0f, 10.0f, false);
  check_case(DpoLossType::Hinge, 41, 1.0f, 0.0f, 1.0f, false);
}

ZN_TEST("dpo.extreme_logits_stay_finite") {
  // beta * logits = -+1000: exp overflows in a naive formula; the loss is 1000 or 0.
  const float pc[] = {-10.0f, -1010.0f}, pr[] = {-1010.0f, -10.0f}, rc[] = {0.0f, 0.0f}, rr[] = {0.0f, 0.0f};
  float losses[2], dpc[2], dpr[2];
  cpu::dpo_loss(2, DpoLossType::Sigmoid, 1.0f, 0.0f, pc, pr, rc, rr, losses, dpc, dpr);
  EXPECT(losses[0] == 0.0f && dpc[0] == -0.0f && dpr[0] == 0.0f, losses[0], " ", dpc[0]);
  EXPECT(losses[1] == 1000.0f && dpc[1] == -1.0f && dpr[1] == 1.0f, losses[1], " ", dpc[1]);
}

ZN_TEST("dpo.bad_arguments_are_errors") {
  const float x[] = {-1.0f};
  float out[3];
  bool caught = false;
  try {
    cpu::dpo_loss(1, DpoLossType::Ipo, 0.0f, 0.0f, x, x, x, x, out, out + 1, out + 2);
  } catch (const Error& e) {
    caught = std::string(e.what()).find("beta") != std::string::npos;
  }
  EXPECT(caught);
}
