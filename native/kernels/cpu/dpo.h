// DPO losses from summed completion log-probs of policy and reference, per pair i:
//   logits = (pi_c - ref_c) - (pi_r - ref_r)
//   sigmoid: -(1 - ls) log sigmoid(beta logits) - ls log sigmoid(-beta logits)   (cDPO smoothing)
//   ipo:     ((pi_c - ref_c) / n_c - (pi_r - ref_r) / n_r - 1 / (2 beta))^2
//   hinge:   max(0, 1 - beta logits)
// Returns per-pair losses and d loss_i / d pi_c, d loss_i / d pi_r; the caller averages.
// Metrics as TRL 1.13 logs them (means over pairs): rewards beta (pi_c - ref_c) and
// beta (pi_r - ref_r), accuracies = fraction with reward_c > reward_r, margins, mean policy logps.
//
// Against TRL 1.13's DPOTrainer._compute_loss (f_divergence_type reverse_kl, one loss type):
// - sigmoid: TRL 1.13 ignores label_smoothing for "sigmoid" (it only feeds robust/exo/aot); we
//   apply the cDPO formula of TRL < 1.0 (the one above). With label_smoothing = 0, the Zephyr
//   recipe's value, the two agree.
// - ipo: TRL 1.13 divides each log-ratio by its completion's token count (clamped to >= 1) and
//   still logs rewards from the summed log-ratios. Pass those counts as chosen_tokens /
//   rejected_tokens to get exactly that; with nullptr every count is 1 (i.e. the caller already
//   averaged, as TRL < 1.0 did, and the rewards are then those of the averaged log-probs).
// - hinge: as TRL; the gradient at the kink (1 - beta logits == 0) is 0, as torch.relu's.
#pragma once
#include <cstdint>

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
                    float* dpolicy_chosen, float* dpolicy_rejected,
                    const int32_t* chosen_tokens = nullptr,
                    const int32_t* rejected_tokens = nullptr);

}  // namespace zn::cpu
