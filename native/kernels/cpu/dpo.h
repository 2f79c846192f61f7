// DPO losses from summed completion log-probs of policy and reference, per pair i:
//   logits = (pi_c - pi_r) - (ref_c - ref_r)
//   sigmoid: -(1 - ls) log sigmoid(beta logits) - ls log sigmoid(-beta logits)   (cDPO smoothing)
//   ipo:     (logits - 1 / (2 beta))^2     (TRL feeds length-averaged log-probs for ipo)
//   hinge:   max(0, 1 - beta logits)
// Returns per-pair losses and d loss_i / d pi_c, d loss_i / d pi_r; the caller averages.
// Rewards: beta (pi_c - ref_c), beta (pi_r - ref_r), as TRL logs them.
#pragma once

namespace zn::cpu {

enum class DpoLossType { Sigmoid, Ipo, Hinge };

struct DpoMetrics {
  double loss_mean;
  double rewards_chosen;    // mean over pairs
  double rewards_rejected;
  double rewards_accuracies;  // fraction with reward_c > reward_r
  double rewards_margins;
  double logps_chosen;      // mean policy log-probs
  double logps_rejected;
};

DpoMetrics dpo_loss(long pairs, DpoLossType type, float beta, float label_smoothing,
                    const float* policy_chosen, const float* policy_rejected,
                    const float* ref_chosen, const float* ref_rejected, float* losses,
                    float* dpolicy_chosen, float* dpolicy_rejected);

}  // namespace zn::cpu
