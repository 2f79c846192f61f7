// The dpoLoss options and result, shared by the CPU and CUDA addons so both read and answer
// exactly the same way: {policyChosen, policyRejected, refChosen, refRejected: Float32Array[P],
// beta, labelSmoothing?, lossType?, chosenTokens?, rejectedTokens?: Int32Array[P]}
//   -> {losses, dPolicyChosen, dPolicyRejected: Float32Array[P], metrics: {TRL names}}.
#pragma once
#include <cstdint>
#include <string>

#include "addon/binding.h"

namespace zn::addon {

enum class DpoLossName { Sigmoid, Ipo, Hinge };

struct DpoArgs {
  size_t pairs = 0;
  ArrayView<float> policy_chosen, policy_rejected, ref_chosen, ref_rejected;
  ArrayView<int32_t> chosen_tokens, rejected_tokens;  // empty when absent
  double beta = 0;
  double label_smoothing = 0;
  DpoLossName loss = DpoLossName::Sigmoid;
};

inline DpoArgs read_dpo_args(const Options& options) {
  DpoArgs a;
  a.policy_chosen = options.f32("policyChosen");
  a.pairs = a.policy_chosen.size;
  a.policy_rejected = options.f32("policyRejected");
  a.ref_chosen = options.f32("refChosen");
  a.ref_rejected = options.f32("refRejected");
  options.expect_size("policyRejected", a.policy_rejected, a.pairs);
  options.expect_size("refChosen", a.ref_chosen, a.pairs);
  options.expect_size("refRejected", a.ref_rejected, a.pairs);
  a.chosen_tokens = options.i32_or_empty("chosenTokens");
  a.rejected_tokens = options.i32_or_empty("rejectedTokens");
  if (a.chosen_tokens.data) options.expect_size("chosenTokens", a.chosen_tokens, a.pairs);
  if (a.rejected_tokens.data) options.expect_size("rejectedTokens", a.rejected_tokens, a.pairs);
  a.beta = options.number("beta");
  if (!(a.beta > 0)) options.error("'beta' must be positive");
  a.label_smoothing = options.number("labelSmoothing", 0.0);
  if (!(a.label_smoothing >= 0 && a.label_smoothing < 0.5)) options.error("'labelSmoothing' must be in [0, 0.5)");
  const std::string name = options.string("lossType", "sigmoid");
  if (name == "sigmoid") a.loss = DpoLossName::Sigmoid;
  else if (name == "ipo") a.loss = DpoLossName::Ipo;
  else if (name == "hinge") a.loss = DpoLossName::Hinge;
  else options.error("'lossType' must be sigmoid, ipo or hinge, got '" + name + "'");
  return a;
}

// Output arrays the kernel writes into, then the result object (metrics under TRL's names).
struct DpoOutputs {
  Napi::Float32Array losses, d_chosen, d_rejected;
  DpoOutputs(Napi::Env env, size_t pairs)
      : losses(Napi::Float32Array::New(env, pairs)),
        d_chosen(Napi::Float32Array::New(env, pairs)),
        d_rejected(Napi::Float32Array::New(env, pairs)) {}
};

template <typename Metrics>
Napi::Object dpo_result(Napi::Env env, const DpoOutputs& outputs, const Metrics& metrics) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("losses", outputs.losses);
  out.Set("dPolicyChosen", outputs.d_chosen);
  out.Set("dPolicyRejected", outputs.d_rejected);
  Napi::Object m = Napi::Object::New(env);
  m.Set("loss", metrics.loss_mean);
  m.Set("rewards/chosen", metrics.rewards_chosen);
  m.Set("rewards/rejected", metrics.rewards_rejected);
  m.Set("rewards/accuracies", metrics.rewards_accuracies);
  m.Set("rewards/margins", metrics.rewards_margins);
  m.Set("logps/chosen", metrics.logps_chosen);
  m.Set("logps/rejected", metrics.logps_rejected);
  out.Set("metrics", m);
  return out;
}

}  // namespace zn::addon
