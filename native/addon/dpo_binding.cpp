// Binding for the fused DPO loss (native/kernels/cpu/dpo.h): one call gives per-pair losses,
// d loss / d policy log-probs and TRL's metrics. Small (one value per pair): runs synchronously.
#include <cstring>

#include "addon/binding.h"
#include "addon/register.h"
#include "kernels/cpu/dpo.h"

namespace zn::addon {

namespace {

cpu::DpoLossType loss_type(const Options& options) {
  const std::string name = options.string("lossType", "sigmoid");
  if (name == "sigmoid") return cpu::DpoLossType::Sigmoid;
  if (name == "ipo") return cpu::DpoLossType::Ipo;
  if (name == "hinge") return cpu::DpoLossType::Hinge;
  options.error("'lossType' must be sigmoid, ipo or hinge, got '" + name + "'");
}

// dpoLoss({policyChosen, policyRejected, refChosen, refRejected: Float32Array[P], beta,
//          labelSmoothing?, lossType?, chosenTokens?, rejectedTokens?: Int32Array[P]})
//   -> {losses, dPolicyChosen, dPolicyRejected: Float32Array[P], metrics: {...}}
Napi::Value DpoLoss(const Napi::CallbackInfo& info) {
  Options options(info, "dpoLoss");
  const ArrayView<float> policy_chosen = options.f32("policyChosen");
  const size_t pairs = policy_chosen.size;
  const ArrayView<float> policy_rejected = options.f32("policyRejected");
  const ArrayView<float> ref_chosen = options.f32("refChosen");
  const ArrayView<float> ref_rejected = options.f32("refRejected");
  options.expect_size("policyRejected", policy_rejected, pairs);
  options.expect_size("refChosen", ref_chosen, pairs);
  options.expect_size("refRejected", ref_rejected, pairs);
  const ArrayView<int32_t> chosen_tokens = options.i32_or_empty("chosenTokens");
  const ArrayView<int32_t> rejected_tokens = options.i32_or_empty("rejectedTokens");
  if (chosen_tokens.data) options.expect_size("chosenTokens", chosen_tokens, pairs);
  if (rejected_tokens.data) options.expect_size("rejectedTokens", rejected_tokens, pairs);
  const double beta = options.number("beta");
  if (!(beta > 0)) options.error("'beta' must be positive");
  const double label_smoothing = options.number("labelSmoothing", 0.0);
  if (!(label_smoothing >= 0 && label_smoothing < 0.5)) options.error("'labelSmoothing' must be in [0, 0.5)");
  const cpu::DpoLossType type = loss_type(options);

  Napi::Env env = info.Env();
  Napi::Float32Array losses = Napi::Float32Array::New(env, pairs);
  Napi::Float32Array d_chosen = Napi::Float32Array::New(env, pairs);
  Napi::Float32Array d_rejected = Napi::Float32Array::New(env, pairs);
  cpu::DpoMetrics metrics{};
  run_sync(options, [&] {
    metrics = cpu::dpo_loss(long(pairs), type, float(beta), float(label_smoothing), policy_chosen.data,
                            policy_rejected.data, ref_chosen.data, ref_rejected.data, losses.Data(),
                            d_chosen.Data(), d_rejected.Data(), chosen_tokens.data, rejected_tokens.data);
  });
  Napi::Object out = Napi::Object::New(env);
  out.Set("losses", losses);
  out.Set("dPolicyChosen", d_chosen);
  out.Set("dPolicyRejected", d_rejected);
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

}  // namespace

void register_dpo(Napi::Env env, Napi::Object exports) {
  exports.Set("dpoLoss", Napi::Function::New(env, DpoLoss, "dpoLoss"));
}

}  // namespace zn::addon
