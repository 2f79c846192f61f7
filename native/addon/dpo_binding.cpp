// Binding for the fused DPO loss (native/kernels/cpu/dpo.h): one call gives per-pair losses,
// d loss / d policy log-probs and TRL's metrics. Small (one value per pair): runs synchronously.
#include "addon/binding.h"
#include "addon/dpo_args.h"
#include "addon/register.h"
#include "kernels/cpu/dpo.h"

namespace zn::addon {

namespace {

cpu::DpoLossType loss_type(DpoLossName name) {
  switch (name) {
    case DpoLossName::Ipo: return cpu::DpoLossType::Ipo;
    case DpoLossName::Hinge: return cpu::DpoLossType::Hinge;
    default: return cpu::DpoLossType::Sigmoid;
  }
}

// dpoLoss(options) -> {losses, dPolicyChosen, dPolicyRejected, metrics}: see addon/dpo_args.h.
Napi::Value DpoLoss(const Napi::CallbackInfo& info) {
  Options options(info, "dpoLoss");
  const DpoArgs a = read_dpo_args(options);
  Napi::Env env = info.Env();
  DpoOutputs outputs(env, a.pairs);
  cpu::DpoMetrics metrics{};
  run_sync(options, [&] {
    metrics = cpu::dpo_loss(long(a.pairs), loss_type(a.loss), float(a.beta), float(a.label_smoothing),
                            a.policy_chosen.data, a.policy_rejected.data, a.ref_chosen.data, a.ref_rejected.data,
                            outputs.losses.Data(), outputs.d_chosen.Data(), outputs.d_rejected.Data(),
                            a.chosen_tokens.data, a.rejected_tokens.data);
  });
  return dpo_result(env, outputs, metrics);
}

}  // namespace

void register_dpo(Napi::Env env, Napi::Object exports) {
  exports.Set("dpoLoss", Napi::Function::New(env, DpoLoss, "dpoLoss"));
}

}  // namespace zn::addon
