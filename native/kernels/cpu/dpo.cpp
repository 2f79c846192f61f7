// DPO losses and their gradients w.r.t. the policy log-probs, per pair (see dpo.h for the
// formulas and how they line up with TRL). With z = beta * logits:
//   sigmoid: dL/dz = -(1 - ls) sigmoid(-z) + ls sigmoid(z);  dL/dpi_c = beta dL/dz = -dL/dpi_r
//   ipo:     dL/dpi_c = 2 (delta - 1/(2 beta)) / n_c,  dL/dpi_r = -2 (delta - 1/(2 beta)) / n_r
//   hinge:   dL/dpi_c = -beta if 1 - z > 0 else 0;  dL/dpi_r = -dL/dpi_c
#include "kernels/cpu/dpo.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"

namespace zn::cpu {

namespace {

// log sigmoid(x) = min(x, 0) - log1p(exp(-|x|)): no overflow for any x.
double log_sigmoid(double x) { return std::min(x, 0.0) - std::log1p(std::exp(-std::fabs(x))); }

double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

struct PairResult {
  double loss, dchosen, drejected;
};

// chosen / rejected: the policy-minus-reference log-ratios, rounded to f32 as TRL's tensors are.
PairResult pair_loss(DpoLossType type, double beta, double ls, float chosen, float rejected,
                     double chosen_tokens, double rejected_tokens) {
  switch (type) {
    case DpoLossType::Sigmoid: {
      const double z = beta * double(chosen - rejected);
      const double loss = -(1 - ls) * log_sigmoid(z) - ls * log_sigmoid(-z);
      const double dz = -(1 - ls) * sigmoid(-z) + ls * sigmoid(z);
      return {loss, beta * dz, -beta * dz};
    }
    case DpoLossType::Ipo: {
      const double gap = chosen / chosen_tokens - rejected / rejected_tokens - 1 / (2 * beta);
      return {gap * gap, 2 * gap / chosen_tokens, -2 * gap / rejected_tokens};
    }
    case DpoLossType::Hinge: {
      const double margin = 1 - beta * double(chosen - rejected);
      return margin > 0 ? PairResult{margin, -beta, beta} : PairResult{0, 0, 0};
    }
  }
  fail("dpo_loss: unknown loss type ", int(type));
}

// TRL: completion_mask.sum(dim=1).clamp(min=1.0).
double token_count(const int32_t* tokens, long i) {
  return tokens ? std::max(1.0, double(tokens[i])) : 1.0;
}

}  // namespace

DpoMetrics dpo_loss(long pairs, DpoLossType type, float beta, float label_smoothing,
                    const float* policy_chosen, const float* policy_rejected,
                    const float* ref_chosen, const float* ref_rejected, float* losses,
                    float* dpolicy_chosen, float* dpolicy_rejected, const int32_t* chosen_tokens,
                    const int32_t* rejected_tokens) {
  ZN_CHECK(pairs > 0, "dpo_loss: need at least one pair, got ", pairs);
  ZN_CHECK(beta > 0, "dpo_loss: beta must be positive, got ", beta);
  ZN_CHECK(label_smoothing >= 0 && label_smoothing <= 1,
           "dpo_loss: label_smoothing must lie in [0, 1], got ", label_smoothing);
  DpoMetrics sums{};
  for (long i = 0; i < pairs; ++i) {
    const float chosen = policy_chosen[i] - ref_chosen[i];
    const float rejected = policy_rejected[i] - ref_rejected[i];
    const PairResult r = pair_loss(type, beta, label_smoothing, chosen, rejected,
                                   token_count(chosen_tokens, i), token_count(rejected_tokens, i));
    losses[i] = float(r.loss);
    dpolicy_chosen[i] = float(r.dchosen);
    dpolicy_rejected[i] = float(r.drejected);
    // TRL's rewards are f32 tensors beta * log-ratio; the accuracy compares those.
    const float reward_chosen = beta * chosen, reward_rejected = beta * rejected;
    sums.loss_mean += r.loss;
    sums.rewards_chosen += reward_chosen;
    sums.rewards_rejected += reward_rejected;
    sums.rewards_accuracies += reward_chosen > reward_rejected ? 1.0 : 0.0;
    sums.rewards_margins += double(reward_chosen) - double(reward_rejected);
    sums.logps_chosen += policy_chosen[i];
    sums.logps_rejected += policy_rejected[i];
  }
  const double n = double(pairs);
  return {sums.loss_mean / n,       sums.rewards_chosen / n, sums.rewards_rejected / n,
          sums.rewards_accuracies / n, sums.rewards_margins / n, sums.logps_chosen / n,
          sums.logps_rejected / n};
}

}  // namespace zn::cpu
