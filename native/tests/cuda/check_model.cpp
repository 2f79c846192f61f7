// Model checks of the device check: tiny random Mistrals trained side by side on the CPU model
// (the reference: itself tested against float64 and finite differences in test_model.cpp) and
// on the CUDA model, from the same safetensors weights. Each case: reference log-probs of the
// DPO batch from logprobs(), 3 SFT steps (loss = mean -logp over targets != -100), 3 DPO steps
// (sigmoid, beta 0.1, chosen and rejected packed in one batch, cpu::dpo_loss on the host for
// both), next-token logits, then every parameter. Per step: loss, grad norm and every
// parameter's gradient. Plus the file contracts (weights saved on the GPU reload bit-identically
// on the CPU; optimizer state GPU -> CPU -> GPU unchanged), the CPU model's error text for a bad
// token id, and the memory-plan error for a plan that cannot fit. offload_optimizer cases train
// with the master and moments on the host (chunks of an odd size, so that chunks split
// parameters); a frozen bf16 model (no f32 master on the device) must give the trainable bf16
// model's log-probs and logits bit for bit.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "kernels/cuda/gemm.h"

#ifdef ZN_CUDA_CHECK_CPU
#include "core/bf16.h"
#include "core/random.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/dpo.h"
#include "model/mistral.h"
#include "model/mistral_cuda.h"
#include "model/safetensors.h"
#include "tests/temp_file.h"
#endif

namespace zn::cuda::check {

#ifdef ZN_CUDA_CHECK_CPU
namespace {

using model::CudaMistralModel;
using model::MistralConfig;
using model::MistralModel;
using model::ModelOptions;
using model::ParameterSpec;
using model::Precision;
using model::StepProfile;
using model::TokenBatchView;

// Tolerances (relative errors, see Report). Parameters are compared by the error of the update,
// relative to how far the six steps moved each tensor (a stricter measure than relative to the
// values, which training barely changes).
// f32 mode: both models compute in f32 and differ only in summation order (GEMM tiling, atomics,
// reductions): the first step's losses agree to ~1e-7 and its gradients to ~1e-6. AdamW then
// amplifies that noise where a gradient element is near zero: its first update is
// lr * g / (|g| + eps), and for |g| ~ eps = 1e-8 (a sum that cancels, with a few % of float
// noise) the two devices move that weight by visibly different amounts, up to 2 lr. So the
// later steps run on slightly different weights: their gradients agree to ~1e-4 (1e-3 allowed),
// losses and grad norms to ~1e-5 (the 1e-4 the model must meet). On the first H100 run one such
// element (an o_proj weight whose clipped first gradient was 6e-9 on the CPU and -3e-9 on the
// GPU) set the trajectories apart, and after six steps the embedding's update differed by 4e-3
// although every first-step gradient matched to 2e-6. So the update comparison leaves out the
// elements where AdamW is ill-conditioned, those where at some step the devices' gradients
// differ by more than 1% of AdamW's denominator sqrt(v_hat) + eps (step_disagreement), and
// compares the rest to 2e-3.
// How many are left out grows with how far the two trajectories drifted apart: on that H100
// run's data, 257 of 361088 (7e-4) with later gradients 2e-4 apart, 19-32 elsewhere (3e-5 apart).
// The gradient checks bound that drift (1e-3), so up to 1% may be left out; a wrong optimizer
// step leaves nothing out and fails the comparison of the rest.
// bf16 mode: the CPU model rounds only the GEMM operands to bf16 and keeps every other
// activation in f32, while the GPU stores q/k/v, attention output, gate/up/act and their
// gradients in bf16 (and flash attention rounds P and dS): each storage rounding is 2^-9
// relative, so losses agree to ~1e-3 and gradients to a few 1e-2. Updates: AdamW's first steps
// move each weight by about lr * sign(gradient), so elements whose gradient is within the bf16
// noise of zero flip sign; 0.2 allows 1% of them to flip (error ~ sqrt(4 x 1%)), while a wrong
// gradient gives an error near 1 or above.
struct Tolerances {
  double loss, grad_norm, first_gradients, later_gradients, logits, update;
  // An element's update is left out when a step's gradients differ by more than this fraction of
  // AdamW's denominator (infinite: none is); at most `ill_conditioned` of all elements may be.
  double ill_conditioned_gradient, ill_conditioned;
};
const model::AdamWOptions kAdamW{1e-3, 0.9, 0.999, 1e-8, 0.01, 1.0};
constexpr Tolerances kF32{1e-4, 1e-4, 1e-5, 1e-3, 1e-4, 2e-3, 1e-2, 1e-2};
constexpr Tolerances kBf16{1e-2, 5e-2, 5e-2, 1e-1, 5e-2, 0.2, INFINITY, 0};

struct Batch {
  std::vector<int32_t> ids, positions, targets, cu;
  TokenBatchView view() const {
    return {long(ids.size()), ids.data(), positions.data(), targets.data(), cu.data(), int(cu.size()) - 1};
  }
};

// Documents of the given lengths end to end; targets are the next token, -100 for each
// document's last token and its first `prompt` tokens (as an SFT or DPO collator masks them).
// Token ids include the pad id now and then, whose embedding row must get no gradient.
Batch packed_batch(const std::vector<int>& lengths, int prompt, long vocab, long pad_id) {
  Batch b;
  b.cu.push_back(0);
  std::uniform_int_distribution<int> token(0, int(vocab) - 1);
  for (int length : lengths) {
    const size_t first = b.ids.size();
    for (int i = 0; i < length; ++i) {
      b.ids.push_back(i % 7 == 5 ? int32_t(pad_id) : token(rng()));
      b.positions.push_back(i);
    }
    for (int i = 0; i < length; ++i)
      b.targets.push_back(i + 1 < length && i >= prompt ? b.ids[first + size_t(i) + 1] : -100);
    b.cu.push_back(int32_t(b.ids.size()));
  }
  return b;
}

using zn::test::TempFile;

// Random weights in HF layouts: norms 1 + N(0, 0.1^2), every matrix N(0, 1/hidden) (so a tied
// embedding makes logits of order 1, not sqrt(hidden), and the losses stay away from saturation).
void write_random_weights(const MistralConfig& c, const std::string& path) {
  std::vector<std::vector<float>> values;
  std::vector<StTensorToWrite> tensors;
  const std::vector<ParameterSpec> table = model::parameter_table(c);
  values.reserve(table.size());
  for (const ParameterSpec& p : table) {
    const bool norm = p.shape.size() == 1;
    values.push_back(random_normal(p.numel, norm ? 0.1f : 1.0f / std::sqrt(float(p.shape[1]))));
    if (norm)
      for (float& x : values.back()) x += 1.0f;
    tensors.push_back({p.name, StDType::F32, p.shape, values.back().data()});
  }
  write_safetensors(path, tensors, {});
}

// What one training run records, for comparing the two devices.
struct Trace {
  std::vector<float> reference_logp;
  std::vector<double> loss, grad_norm;
  std::vector<std::vector<std::vector<float>>> grads;  // [step][parameter]
  std::vector<float> logits;
  std::vector<std::vector<float>> initial, trained;  // [parameter]: loaded, after the steps
  std::vector<std::vector<float>> after_first;       // [parameter]: after step 1
};

// ModelOptions by field (its later fields, frozen and lora, left empty).
ModelOptions model_options(Precision precision, long max_tokens, bool checkpointing, bool trainable,
                           bool offload = false) {
  ModelOptions o;
  o.precision = precision;
  o.max_tokens = max_tokens;
  o.gradient_checkpointing = checkpointing;
  o.trainable = trainable;
  o.offload_optimizer = offload;
  return o;
}

bool is_frozen(const ModelOptions& o, const ParameterSpec& p) {
  return std::find(o.frozen.begin(), o.frozen.end(), p.name) != o.frozen.end();
}

// Every parameter's values or gradients (a frozen parameter's: zeros, as it has none), the
// base's, then LoRA's adapters'.
template <class Model>
std::vector<std::vector<float>> read_all(const Model& m, bool gradients) {
  std::vector<std::vector<float>> out;
  for (const auto* table : {&m.parameters(), &m.adapter_parameters()}) {
    for (const ParameterSpec& p : *table) {
      out.emplace_back(p.numel);
      if (gradients && is_frozen(m.options(), p)) continue;
      if (gradients) m.read_gradient(p, out.back().data());
      else m.read_master(p, out.back().data());
    }
  }
  return out;
}

// Every parameter, base then adapters (read_all's order).
template <class Model>
std::vector<ParameterSpec> all_parameters(const Model& m) {
  std::vector<ParameterSpec> all = m.parameters();
  all.insert(all.end(), m.adapter_parameters().begin(), m.adapter_parameters().end());
  return all;
}

// Random LoRA adapters, A and B both N(0, 0.5^2 / fan-in) (B nonzero, unlike PEFT's start, so
// that both matrices get gradients from the first step).
void write_random_adapters(const MistralConfig& c, const model::LoraConfig& lora, const std::string& path) {
  const model::LoraTable table(model::parameter_table(c), lora);
  std::vector<std::vector<float>> values;
  std::vector<StTensorToWrite> tensors;
  values.reserve(table.parameters().size());
  for (const ParameterSpec& p : table.parameters()) {
    values.push_back(random_normal(p.numel, 0.5f / std::sqrt(float(p.shape[1]))));
    tensors.push_back({p.name, StDType::F32, p.shape, values.back().data()});
  }
  write_safetensors(path, tensors, {});
}

// Per-document sums of logp over the targeted tokens.
std::vector<float> sequence_logps(const Batch& b, const std::vector<float>& logp) {
  std::vector<float> sums(b.cu.size() - 1, 0.0f);
  for (size_t doc = 0; doc + 1 < b.cu.size(); ++doc)
    for (int32_t t = b.cu[doc]; t < b.cu[doc + 1]; ++t) sums[doc] += logp[size_t(t)];
  return sums;
}

constexpr float kDpoBeta = 0.1f;

// The sigmoid DPO loss (beta 0.1) of a batch whose documents alternate chosen, rejected, from
// the policy's per-token logp and the reference's per-document sums; writes d loss / d logp
// (mean over pairs) into dlogp's targeted tokens and returns the loss.
double dpo_loss_and_dlogp(const Batch& b, const std::vector<float>& logp, const std::vector<float>& ref,
                          std::vector<float>& dlogp) {
  const std::vector<float> pi = sequence_logps(b, logp);
  const size_t pairs = pi.size() / 2;
  std::vector<float> pc(pairs), pr(pairs), rc(pairs), rr(pairs), losses(pairs), dc(pairs), dr(pairs);
  for (size_t i = 0; i < pairs; ++i) {
    pc[i] = pi[2 * i], pr[i] = pi[2 * i + 1], rc[i] = ref[2 * i], rr[i] = ref[2 * i + 1];
  }
  const double loss = cpu::dpo_loss(long(pairs), cpu::DpoLossType::Sigmoid, kDpoBeta, 0.0f, pc.data(), pr.data(),
                                    rc.data(), rr.data(), losses.data(), dc.data(), dr.data())
                          .loss_mean;
  for (size_t doc = 0; doc + 1 < b.cu.size(); ++doc) {
    const float g = (doc % 2 == 0 ? dc[doc / 2] : dr[doc / 2]) / float(pairs);
    for (int32_t t = b.cu[doc]; t < b.cu[doc + 1]; ++t)
      if (b.targets[size_t(t)] != -100) dlogp[size_t(t)] = g;
  }
  return loss;
}

template <class Model>
Trace train(Model& m, const std::string& weights, const std::string& adapters, const Batch& sft, const Batch& dpo) {
  Trace trace;
  m.load_weights({weights});
  if (!adapters.empty()) m.load_adapters({adapters});
  trace.initial = read_all(m, false);
  trace.reference_logp.resize(dpo.ids.size());
  m.logprobs(dpo.view(), trace.reference_logp.data());
  const std::vector<float> ref = sequence_logps(dpo, trace.reference_logp);
  const model::AdamWOptions& hp = kAdamW;

  // SFT steps take forward_backward (dlogp is -1/count per labelled token, known up front: the
  // GPU's one-pass lm_head against the CPU's), DPO steps forward then backward.
  auto step = [&](const Batch& b, bool preference) {
    m.zero_grad();
    std::vector<float> logp(b.ids.size()), dlogp(b.ids.size(), 0.0f);
    double loss = 0;
    if (!preference) {
      long count = 0;
      for (size_t t = 0; t < logp.size(); ++t) count += b.targets[t] != -100;
      for (size_t t = 0; t < logp.size(); ++t) {
        if (b.targets[t] != -100) dlogp[t] = -1.0f / float(count);
      }
      m.forward_backward(b.view(), dlogp.data(), logp.data());
      for (size_t t = 0; t < logp.size(); ++t) {
        if (b.targets[t] != -100) loss -= logp[t] / double(count);
      }
    } else {
      m.forward(b.view(), logp.data());
      loss = dpo_loss_and_dlogp(b, logp, ref, dlogp);
      m.backward(dlogp.data(), long(dlogp.size()));
    }
    trace.loss.push_back(loss);
    trace.grads.push_back(read_all(m, true));
    trace.grad_norm.push_back(m.clip_and_step(hp));
    if (trace.after_first.empty()) trace.after_first = read_all(m, false);
  };
  for (int s = 0; s < 3; ++s) step(sft, false);
  for (int s = 0; s < 3; ++s) step(dpo, true);
  trace.logits.resize(size_t(sft.cu.size() - 1) * size_t(m.config().vocab_size));
  m.next_token_logits(sft.view(), trace.logits.data());
  trace.trained = read_all(m, false);
  return trace;
}

double relative(double got, double want) { return std::fabs(got - want) / std::max(std::fabs(want), 1e-30); }

// How much each element's AdamW step could differ between the devices, at its worst step: the
// gradient difference after clipping over the step's denominator sqrt(v_hat) + eps (v from the
// CPU's clipped gradients), the size of the change it makes to the normalized step m_hat /
// (sqrt(v_hat) + eps), whose magnitude is about 1. Large where an element's gradients have been
// near zero so far (see Tolerances); small where its history sets the scale.
std::vector<double> step_disagreement(const Trace& gpu, const Trace& cpu, size_t p) {
  const size_t n = cpu.grads[0][p].size();
  std::vector<double> worst(n, 0.0), v(n, 0.0);
  for (size_t s = 0; s < cpu.grads.size(); ++s) {
    const double clip = cpu::clip_coefficient(cpu.grad_norm[s], kAdamW.max_grad_norm);
    const double bias = 1.0 - std::pow(kAdamW.beta2, double(s + 1));
    const std::vector<float>&g = gpu.grads[s][p], &c = cpu.grads[s][p];
    for (size_t i = 0; i < n; ++i) {
      v[i] = kAdamW.beta2 * v[i] + (1.0 - kAdamW.beta2) * (clip * c[i]) * (clip * c[i]);
      const double change = clip * std::fabs(double(g[i]) - c[i]) / (std::sqrt(v[i] / bias) + kAdamW.eps);
      worst[i] = std::max(worst[i], change);
    }
  }
  return worst;
}

// Where the two devices' first AdamW steps differ most: the element, its gradients and how far
// each device moved it (first steps move every element by about lr, so a difference near lr is
// an element whose gradient was within float noise of zero; see Tolerances).
void print_first_step_divergence(const std::vector<ParameterSpec>& params, const Trace& gpu, const Trace& cpu) {
  double worst = -1;
  size_t worst_p = 0, worst_i = 0;
  for (size_t p = 0; p < params.size(); ++p)
    for (size_t i = 0; i < cpu.initial[p].size(); ++i) {
      const double d = std::fabs(double(gpu.after_first[p][i]) - cpu.after_first[p][i]);
      if (d > worst) worst = d, worst_p = p, worst_i = i;
    }
  const auto moved = [&](const Trace& t) { return t.after_first[worst_p][worst_i] - cpu.initial[worst_p][worst_i]; };
  std::printf("     step 1, largest update difference: %s[%zu], gradient cpu %.3g gpu %.3g, moved cpu %.3g gpu %.3g\n",
              params[worst_p].name.c_str(), worst_i, cpu.grads[0][worst_p][worst_i], gpu.grads[0][worst_p][worst_i],
              moved(cpu), moved(gpu));
}

// The six steps' parameter updates, GPU against CPU, per tensor, over the elements where AdamW
// is well-conditioned; the ones left out are counted and the worst of them printed.
void compare_updates(Report& report, const std::string& what, const std::vector<ParameterSpec>& params,
                     const Trace& gpu, const Trace& cpu, const Tolerances& tol) {
  double update = 0, worst_left_out = 0;
  size_t left_out = 0, elements = 0, worst_p = 0, worst_i = 0;
  std::string worst_update;
  for (size_t p = 0; p < params.size(); ++p) {
    const std::vector<double> disagreement = step_disagreement(gpu, cpu, p);
    std::vector<float> moved_cpu, moved_gpu;
    for (size_t i = 0; i < disagreement.size(); ++i) {
      if (disagreement[i] > tol.ill_conditioned_gradient) {
        ++left_out;
        if (disagreement[i] > worst_left_out) worst_left_out = disagreement[i], worst_p = p, worst_i = i;
        continue;
      }
      moved_cpu.push_back(cpu.trained[p][i] - cpu.initial[p][i]);
      moved_gpu.push_back(gpu.trained[p][i] - cpu.initial[p][i]);
    }
    elements += disagreement.size();
    const double e = rel_error(moved_gpu, moved_cpu);
    if (!(e <= update)) {
      update = e;
      worst_update = params[p].name;
    }
  }
  std::printf("     worst parameter update: %s\n", worst_update.c_str());
  print_first_step_divergence(params, gpu, cpu);
  if (left_out > 0) {
    std::printf("     left out of the updates: %zu of %zu elements; the most: %s[%zu], gradients cpu/gpu by step:",
                left_out, elements, params[worst_p].name.c_str(), worst_i);
    for (size_t s = 0; s < cpu.grads.size(); ++s)
      std::printf(" %.3g/%.3g", cpu.grads[s][worst_p][worst_i], gpu.grads[s][worst_p][worst_i]);
    std::printf(", moved cpu %.3g gpu %.3g\n", cpu.trained[worst_p][worst_i] - cpu.initial[worst_p][worst_i],
                gpu.trained[worst_p][worst_i] - cpu.initial[worst_p][worst_i]);
  }
  report.compare("model", what + " parameter updates (worst)", "cpu", update, tol.update);
  if (std::isfinite(tol.ill_conditioned_gradient))
    report.compare("model", what + " share of updates left out", "cpu", double(left_out) / double(elements),
                   tol.ill_conditioned);
}

void compare_traces(Report& report, const std::string& what, const std::vector<ParameterSpec>& params,
                    const Trace& gpu, const Trace& cpu, const Tolerances& tol) {
  report.compare("model", what + " reference logp", "cpu", rel_error(gpu.reference_logp, cpu.reference_logp),
                 tol.logits);
  double loss = 0, norm = 0, first_grads = 0, later_grads = 0;
  std::string worst_first, worst_later;
  for (size_t s = 0; s < cpu.loss.size(); ++s) {
    double step_grads = 0;
    for (size_t p = 0; p < params.size(); ++p) {
      const double e = rel_error(gpu.grads[s][p], cpu.grads[s][p]);
      step_grads = std::max(step_grads, e);
      double& worst = s == 0 ? first_grads : later_grads;
      if (!(e <= worst)) {
        worst = e;
        (s == 0 ? worst_first : worst_later) = params[p].name + " step " + std::to_string(s + 1);
      }
    }
    std::printf("     step %zu (%s): loss cpu %.6f gpu %.6f, grad norm cpu %.6f gpu %.6f, gradients %.1e\n",
                s + 1, s < 3 ? "sft" : "dpo", cpu.loss[s], gpu.loss[s], cpu.grad_norm[s], gpu.grad_norm[s],
                step_grads);
    loss = std::max(loss, relative(gpu.loss[s], cpu.loss[s]));
    norm = std::max(norm, relative(gpu.grad_norm[s], cpu.grad_norm[s]));
  }
  report.compare("model", what + " loss, 6 steps", "cpu", loss, tol.loss);
  report.compare("model", what + " grad norm, 6 steps", "cpu", norm, tol.grad_norm);
  std::printf("     worst gradients: %s; %s\n", worst_first.c_str(), worst_later.c_str());
  report.compare("model", what + " step 1 gradients (worst tensor)", "cpu", first_grads, tol.first_gradients);
  report.compare("model", what + " steps 2-6 gradients (worst)", "cpu", later_grads, tol.later_gradients);
  report.compare("model", what + " next-token logits", "cpu", rel_error(gpu.logits, cpu.logits), tol.logits);
  compare_updates(report, what, params, gpu, cpu, tol);
}

struct ModelCase {
  ModelCase(std::string name_, MistralConfig config_, Precision precision_, bool checkpointing_, bool offload_ = false,
            std::vector<std::string> frozen_ = {}, model::LoraConfig lora_ = {})
      : name(std::move(name_)), config(config_), precision(precision_), checkpointing(checkpointing_),
        offload(offload_), frozen(std::move(frozen_)), lora(std::move(lora_)) {}
  std::string name;
  MistralConfig config;
  Precision precision;
  bool checkpointing;
  bool offload;
  std::vector<std::string> frozen;  // ModelOptions::frozen
  model::LoraConfig lora;            // ModelOptions::lora
};

// Chunks of the offloaded step: odd, so that chunk edges fall inside parameters and rows.
constexpr const char* kOffloadChunkForChecks = "4099";

MistralConfig tiny_config(int head_dim, bool tied) {
  MistralConfig c;
  c.vocab_size = 256;
  c.hidden_size = 128;
  c.intermediate_size = 256;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = head_dim;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.sliding_window = 8;  // smaller than every document: the window masks within documents
  c.tie_word_embeddings = tied;
  c.pad_token_id = 3;
  return c;
}

constexpr long kMaxTokens = 48;

// The recipe's layout (bf16, checkpointing, offloaded) steps with profile_steps on: the same
// numbers as the CPU model (check_training compares them), and every part of its last step timed.
bool profiled(const ModelCase& mc) { return mc.offload && mc.checkpointing && mc.precision == Precision::BF16; }

void check_step_profile(Report& report, const std::string& what, const CudaMistralModel& model) {
  const StepProfile* p = model.step_profile();
  const bool timed = p && p->clip > 0 && p->host_adamw > 0 && p->gradient_wait >= 0 && p->upload_wait >= 0 &&
                     p->norms > 0 && p->gradient_copy > 0 && p->weight_upload > 0 && p->device_adamw == 0;
  if (p) {
    std::printf("  step profile: clip %.3g s, host AdamW %.3g, gradient wait %.3g, upload wait %.3g, norms %.3g, "
                "gradient copies %.3g, weight uploads %.3g\n",
                p->clip, p->host_adamw, p->gradient_wait, p->upload_wait, p->norms, p->gradient_copy, p->weight_upload);
  }
  report.compare("model", what + " step profile (every offloaded part timed)", "parts untimed", timed ? 0.0 : 1.0, 0.0);
}

void check_training(Report& report, const ModelCase& mc, const Batch& sft, const Batch& dpo) {
  const std::string what = mc.name + (mc.precision == Precision::BF16 ? " bf16" : " f32") +
                           (mc.checkpointing ? " ckpt" : "") + (mc.offload ? " offload" : "") +
                           (profiled(mc) ? " profiled" : "");
  guarded(report, "model", what, [&] {
    ModelOptions options = model_options(mc.precision, kMaxTokens, mc.checkpointing, true, mc.offload);
    options.frozen = mc.frozen;
    options.lora = mc.lora;
    options.profile_steps = profiled(mc);
    TempFile weights(".safetensors"), adapters(".safetensors");
    write_random_weights(mc.config, weights.path);
    if (mc.lora.rank > 0) write_random_adapters(mc.config, mc.lora, adapters.path);
    const std::string adapter_path = mc.lora.rank > 0 ? adapters.path : "";
    MistralModel cpu_model(mc.config, options);
    CudaMistralModel gpu_model(mc.config, options);
    const Trace cpu = train(cpu_model, weights.path, adapter_path, sft, dpo);
    const Trace gpu = train(gpu_model, weights.path, adapter_path, sft, dpo);
    const std::vector<ParameterSpec> params = all_parameters(cpu_model);
    compare_traces(report, what, params, gpu, cpu, mc.precision == Precision::BF16 ? kBf16 : kF32);
    if (profiled(mc)) check_step_profile(report, what, gpu_model);
    if (mc.frozen.empty()) return;
    size_t moved = 0;
    for (size_t p = 0; p < gpu.initial.size(); ++p)
      if (is_frozen(options, params[p]))
        moved += std::memcmp(gpu.initial[p].data(), gpu.trained[p].data(), gpu.initial[p].size() * 4) != 0;
    report.compare("model", what + " frozen parameters moved", "bits", double(moved), 0.0);
  });
}

// Weights saved from the GPU reload bit-identically into the CPU model; an optimizer state file
// goes GPU -> CPU -> GPU and comes back with the same tensors and step.
void check_files(Report& report, const MistralConfig& c, const Batch& sft, bool offload) {
  const std::string what = offload ? " (offload)" : "";
  guarded(report, "model", "save/load across devices" + what, [&] {
    const ModelOptions options = model_options(Precision::BF16, kMaxTokens, false, true, offload);
    TempFile weights(".safetensors"), saved(".safetensors"), state1(".st"), state2(".st"), state3(".st");
    write_random_weights(c, weights.path);
    CudaMistralModel gpu(c, options);
    gpu.load_weights({weights.path});
    std::vector<float> logp(sft.ids.size()), dlogp(sft.ids.size(), -0.05f);
    gpu.zero_grad();
    gpu.forward(sft.view(), logp.data());
    gpu.backward(dlogp.data(), long(dlogp.size()));
    gpu.clip_and_step({1e-2, 0.9, 0.999, 1e-8, 0.0, 0.0});
    std::vector<std::string> names;
    for (const ParameterSpec& p : gpu.parameters()) names.push_back(p.name);
    gpu.save_weights(saved.path, names, model::SaveDType::F32, {{"format", "pt"}});
    MistralModel cpu(c, options);
    cpu.load_weights({saved.path});
    const auto a = read_all(gpu, false), b = read_all(cpu, false);
    size_t differing = 0;
    for (size_t p = 0; p < a.size(); ++p)
      differing += std::memcmp(a[p].data(), b[p].data(), a[p].size() * sizeof(float)) != 0;
    report.compare("model", "GPU save_weights -> CPU load: tensors differing" + what, "bits", double(differing), 0.0);

    gpu.save_optimizer_state(state1.path);
    cpu.load_optimizer_state(state1.path);
    cpu.save_optimizer_state(state2.path);
    CudaMistralModel gpu2(c, options);
    gpu2.load_optimizer_state(state2.path);
    gpu2.save_optimizer_state(state3.path);
    SafetensorsFile f1(state1.path), f3(state3.path);
    differing = f1.tensors().size() == f3.tensors().size() ? 0 : 1;
    for (const StTensorInfo& t : f1.tensors()) {
      const StTensorInfo* u = f3.find(t.name);
      differing += !u || u->bytes() != t.bytes() || std::memcmp(f1.data(t), f3.data(*u), t.bytes()) != 0;
    }
    report.compare("model", "optimizer state GPU -> CPU -> GPU: tensors differing" + what, "bits", double(differing),
                   0.0);
    report.compare("model", "optimizer state GPU -> CPU -> GPU: step" + what, "1",
                   std::fabs(double(gpu2.optimizer_step()) - 1.0), 0.0);
  });
}

// A frozen bf16 model keeps only bf16 weights (and f32 norms) on the device: same log-probs and
// logits as the trainable bf16 model's, its parameters the bf16 rounding of the master, and a
// plan whose weights are 2 bytes a parameter plus the norms.
void check_frozen(Report& report, const MistralConfig& c, const Batch& sft) {
  guarded(report, "model", "frozen bf16 model", [&] {
    TempFile weights(".safetensors");
    write_random_weights(c, weights.path);
    CudaMistralModel trainable(c, model_options(Precision::BF16, kMaxTokens, false, true));
    CudaMistralModel frozen(c, model_options(Precision::BF16, kMaxTokens, false, false));
    trainable.load_weights({weights.path});
    frozen.load_weights({weights.path});
    std::vector<float> a(sft.ids.size()), b(sft.ids.size());
    trainable.logprobs(sft.view(), a.data());
    frozen.logprobs(sft.view(), b.data());
    const size_t docs = sft.cu.size() - 1, vocab = size_t(c.vocab_size);
    std::vector<float> la(docs * vocab), lb(docs * vocab);
    trainable.next_token_logits(sft.view(), la.data());
    frozen.next_token_logits(sft.view(), lb.data());
    report.compare("model", "frozen bf16: log-probs and logits differing from trainable", "bits",
                   double(std::memcmp(a.data(), b.data(), a.size() * 4) != 0) +
                       double(std::memcmp(la.data(), lb.data(), la.size() * 4) != 0),
                   0.0);
    size_t differing = 0, params = 0, norms = 0;
    const auto master = read_all(trainable, false), held = read_all(frozen, false);
    for (size_t p = 0; p < master.size(); ++p) {
      const bool norm = frozen.parameters()[p].shape.size() == 1;
      params += master[p].size();
      norms += norm ? master[p].size() : 0;
      for (size_t i = 0; i < master[p].size(); ++i) {
        const float want = norm ? master[p][i] : bf16_to_f32(f32_to_bf16(master[p][i]));
        differing += std::memcmp(&want, &held[p][i], 4) != 0;
      }
    }
    report.compare("model", "frozen bf16: parameters differing from the rounded master", "bits",
                   double(differing), 0.0);
    const double expected = double(params * 2 + norms * 4), planned = double(frozen.memory_plan().weights);
    std::printf("     frozen bf16 plan: weights %.0f bytes for %zu parameters (%zu in norms)\n", planned, params, norms);
    report.compare("model", "frozen bf16: planned weight bytes vs 2/parameter + 4/norm", "bytes",
                   std::fabs(planned - expected) / expected, 0.01);
  });
}

std::string error_text(const std::function<void()>& body) {
  try {
    body();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

void check_errors(Report& report, const MistralConfig& c, const Batch& sft) {
  guarded(report, "model", "errors", [&] {
    const ModelOptions options = model_options(Precision::F32, kMaxTokens, false, false);
    MistralModel cpu(c, options);
    CudaMistralModel gpu(c, options);
    Batch bad = sft;
    bad.ids[5] = int32_t(c.vocab_size) + 7;
    std::vector<float> logp(bad.ids.size());
    const std::string cpu_text = error_text([&] { cpu.logprobs(bad.view(), logp.data()); });
    const std::string gpu_text = error_text([&] { gpu.logprobs(bad.view(), logp.data()); });
    std::printf("     bad token id: cpu \"%s\", gpu \"%s\"\n", cpu_text.c_str(), gpu_text.c_str());
    report.compare("model", "bad token id: same error text as the CPU", "cpu",
                   gpu_text == cpu_text && cpu_text.find("inputIds[5]") != std::string::npos ? 0.0 : 1.0, 0.0);

    const ModelOptions huge = model_options(Precision::BF16, 1000000000L, false, true);
    const std::string plan_text = error_text([&] { CudaMistralModel impossible(c, huge); });
    std::printf("     impossible plan: \"%s\"\n", plan_text.c_str());
    bool states_plan = true;
    for (const char* part : {"does not fit", "weights", "grads", "optimizer", "activations", "workspaces",
                             "free of", "gradientCheckpointing", "offloadOptimizer", "maxTokens"})
      states_plan = states_plan && plan_text.find(part) != std::string::npos;
    report.compare("model", "maxTokens 1e9: the memory-plan error", "text", states_plan ? 0.0 : 1.0, 0.0);
  });
}

// ---- a DPO training step of the GPU model as the trainer runs it, timed by phase

// HF's initialisation (N(0, 0.02^2) matrices, norms 1) in bf16, what a Mistral-7B checkpoint
// holds; core/random.h draws 7B parameters in seconds.
void write_bf16_weights(const MistralConfig& c, const std::string& path) {
  const std::vector<ParameterSpec> table = model::parameter_table(c);
  std::vector<std::vector<bf16>> values(table.size());
  std::vector<StTensorToWrite> tensors;
  for (size_t t = 0; t < table.size(); ++t) {
    const ParameterSpec& p = table[t];
    values[t].resize(p.numel);
    if (p.shape.size() == 1) {
      std::fill(values[t].begin(), values[t].end(), f32_to_bf16(1.0f));
    } else {
      fill_normal(p.numel, 0, t, 0.02, values[t].data());
    }
    tensors.push_back({p.name, StDType::BF16, p.shape, values[t].data()});
  }
  write_safetensors(path, tensors, {{"format", "pt"}});
}

// `pairs` chosen/rejected documents of `length` tokens (the first `prompt` untrained), packed.
Batch dpo_documents(const MistralConfig& c, int pairs, int length, int prompt) {
  std::vector<int> lengths(size_t(2 * pairs), length);
  return packed_batch(lengths, prompt, c.vocab_size, std::max(0L, c.pad_token_id));
}

struct DpoStepTimes {
  double reference_s = 0, forward_s = 0, backward_s = 0, optimizer_s = 0;
  double total() const { return reference_s + forward_s + backward_s + optimizer_s; }
};

// One step as DpoObjective + the trainer run it: the reference's log-probs, zero_grad and the
// policy's forward, the sigmoid DPO loss (beta 0.1) and its dlogp on the host, backward, then
// clipping and AdamW at learning rate `lr`. Returns the loss; adds each phase's wall time to `times`.
double dpo_step(CudaMistralModel& policy, CudaMistralModel& reference, const Batch& b, double lr,
                DpoStepTimes& times) {
  using clock = std::chrono::steady_clock;
  auto seconds = [](clock::time_point from) { return std::chrono::duration<double>(clock::now() - from).count(); };
  std::vector<float> ref_logp(b.ids.size()), logp(b.ids.size()), dlogp(b.ids.size(), 0.0f);
  auto start = clock::now();
  reference.logprobs(b.view(), ref_logp.data());
  times.reference_s += seconds(start);
  start = clock::now();
  policy.zero_grad();
  policy.forward(b.view(), logp.data());
  times.forward_s += seconds(start);
  const double loss = dpo_loss_and_dlogp(b, logp, sequence_logps(b, ref_logp), dlogp);
  start = clock::now();
  policy.backward(dlogp.data(), long(dlogp.size()));
  times.backward_s += seconds(start);
  start = clock::now();
  policy.clip_and_step({lr, 0.9, 0.999, 1e-8, 0.0, 1.0});
  times.optimizer_s += seconds(start);
  return loss;
}

// The models of a one-GPU DPO run: the policy in bf16 with gradient checkpointing and the
// optimizer offloaded, the frozen bf16 reference; both from the same file.
struct DpoModels {
  CudaMistralModel policy, reference;
  DpoModels(const MistralConfig& c, long tokens, const std::string& weights)
      : policy(c, model_options(Precision::BF16, tokens, true, true, true)),
        reference(c, model_options(Precision::BF16, tokens, false, false)) {
    policy.load_weights({weights});
    reference.load_weights({weights});
  }
};

// The tiny version, as a check: policy and reference start from the same bf16 weights through
// two different layouts (offloaded trainable, frozen), so the first step's margins are exactly
// zero and its loss is log 2; the steps after it must lower the loss on the same batch.
void check_dpo_step(Report& report, const MistralConfig& c) {
  guarded(report, "model", "DPO step, offloaded policy + frozen reference", [&] {
    TempFile weights(".safetensors");
    write_bf16_weights(c, weights.path);
    const Batch b = dpo_documents(c, 2, 12, 4);
    DpoModels m(c, long(b.ids.size()), weights.path);
    DpoStepTimes times;
    std::vector<double> losses;
    for (int step = 0; step < 3; ++step) losses.push_back(dpo_step(m.policy, m.reference, b, 1e-3, times));
    std::printf("     losses %.7f %.7f %.7f (log 2 = %.7f)\n", losses[0], losses[1], losses[2], std::log(2.0));
    report.compare("model", "DPO step 1: loss is log 2 (policy == reference)", "log 2",
                   std::fabs(losses[0] - std::log(2.0)), 1e-6);
    report.compare("model", "DPO steps 2-3 lower the loss", "step 1", losses[2] < losses[1] && losses[1] < losses[0] ? 0 : 1,
                   0);
  });
}

}  // namespace

// Mistral-7B, 4 pairs of 1024-token documents (256-token prompts): 8192 policy tokens, as
// `zephyr-native bench --preset mistral-7b --mode dpo`. One warm-up step (it also faults in the
// host's 81 GiB of master and moments), then two timed.
MistralConfig mistral_7b_config() {
  MistralConfig c;
  c.vocab_size = 32000;
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.num_layers = 32;
  c.num_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.sliding_window = 4096;
  return c;
}

// The device plan of a Mistral-7B LoRA DPO step as issue 20 sizes it for a 24 GB card: r 16,
// all-linear, bf16 base frozen, checkpointing, 4 pairs x 2 x 1024 tokens, the reference being the
// policy with its adapters off (no second model). The plan alone: nothing is allocated.
void run_lora_plan(Report& report, const std::string& only) {
  if (!only.empty() && std::string("lora-plan").rfind(only, 0) != 0) return;
  const MistralConfig c = mistral_7b_config();
  ModelOptions o = model_options(Precision::BF16, 8192, true, true);
  o.lora = {16, 32.0, false, {"all-linear"}, {}};
  for (const ParameterSpec& p : model::parameter_table(c)) o.frozen.push_back(p.name);
  guarded(report, "lora-plan", "Mistral-7B LoRA DPO plan", [&] {
    const model::MemoryPlan plan = CudaMistralModel::plan(c, o);
    std::printf("\n== Mistral-7B LoRA DPO (r 16, all-linear, bf16 base, ckpt, 8192 tokens): %s\n",
                model::plan_breakdown(plan, o).c_str());
    report.note("lora7b_plan_gib", std::to_string(double(plan.total()) / double(size_t(1) << 30)));
    report.compare("lora-plan", "device plan vs 24 GiB", "GiB", double(plan.total()) / double(size_t(24) << 30), 1.0);
  });
}

void run_model_timing(Report& report, const std::string& only) {
  if (!only.empty() && std::string("step7b").rfind(only, 0) != 0) return;
  const MistralConfig c = mistral_7b_config();
  const std::string shape = "Mistral-7B DPO step, 4 pairs x 2 x 1024 tokens, bf16, ckpt, offloaded optimizer";
  std::printf("\n== %s\n", shape.c_str());
  guarded(report, "step7b", shape, [&] {
    using clock = std::chrono::steady_clock;
    auto start = clock::now();
    TempFile weights(".safetensors");
    write_bf16_weights(c, weights.path);
    const double write_s = std::chrono::duration<double>(clock::now() - start).count();
    const Batch b = dpo_documents(c, 4, 1024, 256);
    const long tokens = long(b.ids.size());
    size_t free_before = 0, total = 0;
    ZN_CUDA_CHECK(cudaMemGetInfo(&free_before, &total));
    start = clock::now();
    DpoModels m(c, tokens, weights.path);
    const double load_s = std::chrono::duration<double>(clock::now() - start).count();
    std::printf("     random bf16 weights written in %.1f s, both models loaded in %.1f s\n", write_s, load_s);
    const model::MemoryPlan pp = m.policy.memory_plan(), rp = m.reference.memory_plan();
    std::printf("     plans: policy %.2f GiB on the device + %.2f GiB host, reference %.2f GiB\n",
                double(pp.total()) / (1 << 30), double(pp.host) / (1 << 30), double(rp.total()) / (1 << 30));
    DpoStepTimes warmup, timed;
    dpo_step(m.policy, m.reference, b, 1e-6, warmup);
    constexpr int kSteps = 2;
    for (int s = 0; s < kSteps; ++s) dpo_step(m.policy, m.reference, b, 1e-6, timed);
    size_t free_after = 0;
    ZN_CUDA_CHECK(cudaMemGetInfo(&free_after, &total));
    const double used_gib = double(free_before - free_after) / (1 << 30);
    std::printf("     device memory taken by the two models: %.2f GiB of %.2f GiB; warm-up step %.2f s\n", used_gib,
                double(total) / (1 << 30), warmup.total());
    report.note("step7b_device_gib", std::to_string(used_gib));
    // Model FLOPs (no recompute counted): 6 per parameter-token in the policy, 2 in the reference.
    const double params = double(model::parameter_count(model::parameter_table(c)));
    const double flops = 8.0 * params * double(tokens);
    auto ms = [&](double s) { return 1e3 * s / kSteps; };
    report.timing("step7b", "reference forward", "cuda", ms(timed.reference_s), 2.0 * params * double(tokens), 0);
    report.timing("step7b", "policy forward", "cuda", ms(timed.forward_s), 2.0 * params * double(tokens), 0);
    report.timing("step7b", "policy backward (recomputes each layer)", "cuda", ms(timed.backward_s),
                  4.0 * params * double(tokens), 0);
    report.timing("step7b", "clip + AdamW on the host (copies included)", "cuda+cpu", ms(timed.optimizer_s), 0, 0);
    report.timing("step7b", "whole step", "cuda", ms(timed.total()), flops, 0);
    std::printf("     step %.2f s: %.0f policy tokens/s\n", timed.total() / kSteps, tokens * kSteps / timed.total());
  });
}

// Generation (KvCache, model/generation.h): the same extend calls on the CPU and GPU models: two
// fresh prompts, one longer than the window (8), prefilled together; decoding steps past the
// window, so the rolling buffer wraps; a sequence leaving and another joining beside a decoding
// one. Each call's next-token logits are compared.
void check_generation_case(Report& report, const MistralConfig& c, Precision precision, double tol) {
  const std::string what = std::string("extend logits, ") + (precision == Precision::BF16 ? "bf16" : "f32");
  guarded(report, "generation", what, [&] {
    TempFile weights(".safetensors");
    write_random_weights(c, weights.path);
    MistralModel cpu(c, model_options(precision, kMaxTokens, false, false));
    CudaMistralModel gpu(c, model_options(precision, kMaxTokens, false, false));
    cpu.load_weights({weights.path});
    gpu.load_weights({weights.path});
    cpu.start_generation(3, 40);
    gpu.start_generation(3, 40);
    std::mt19937 rng(7);
    std::uniform_int_distribution<int32_t> token(0, int32_t(c.vocab_size) - 1);
    double worst = 0;
    auto extend = [&](const std::vector<std::pair<int, int>>& calls) {
      std::vector<int32_t> slots, counts, tokens;
      for (const auto& [slot, count] : calls) {
        slots.push_back(slot);
        counts.push_back(count);
        for (int i = 0; i < count; ++i) tokens.push_back(token(rng));
      }
      const model::ExtendRequest request{int(calls.size()), slots.data(), counts.data(), tokens.data()};
      std::vector<float> want(calls.size() * size_t(c.vocab_size)), got(want.size());
      cpu.extend(request, want.data());
      gpu.extend(request, got.data());
      worst = std::max(worst, rel_error(got, want));
    };
    auto acquire = [&] {
      const int slot = cpu.acquire_sequence();
      ZN_CHECK(gpu.acquire_sequence() == slot, "the GPU model gave another slot than the CPU model's ", slot);
      return slot;
    };
    const int a = acquire(), b = acquire();
    extend({{a, 11}, {b, 3}});
    for (int step = 0; step < 9; ++step) extend({{a, 1}, {b, 1}});
    cpu.release_sequence(b);
    gpu.release_sequence(b);
    const int d = acquire();
    extend({{d, 5}, {a, 1}});
    for (int step = 0; step < 4; ++step) extend({{a, 1}, {d, 1}});
    report.compare("generation", what, "cpu", worst, tol);
    // Greedy decoding on each device from its own argmax: the tokens where the two first differ.
    auto greedy = [&](auto& model, int slot) {
      std::vector<int32_t> tokens;
      std::vector<float> logits(size_t(c.vocab_size));
      int32_t token = 7, count = 1;
      for (int step = 0; step < 12; ++step) {
        model.extend({1, &slot, &count, &token}, logits.data());
        token = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        tokens.push_back(token);
      }
      return tokens;
    };
    const std::vector<int32_t> on_cpu = greedy(cpu, d), on_gpu = greedy(gpu, d);
    const size_t same = size_t(std::mismatch(on_cpu.begin(), on_cpu.end(), on_gpu.begin()).first - on_cpu.begin());
    std::printf("     greedy tokens equal on both devices: %zu of %zu\n", same, on_cpu.size());
    if (precision == Precision::F32)
      report.compare("generation", "greedy tokens differing, f32", "cpu", double(on_cpu.size() - same), 0.0);
  });
}

void run_generation_checks(Report& report, const std::string& only) {
  if (std::string("generation").rfind(only, 0) != 0) return;
  std::printf("\n== generation checks (CPU MistralModel vs CudaMistralModel over the KvCache)\n");
  const MistralConfig small = tiny_config(32, false), flash = tiny_config(64, true);
  // f32: the two devices differ in summation order only. bf16: the GPU keeps activations and the
  // cache in bf16, the CPU in f32 (as in the training checks' bf16 tolerances).
  check_generation_case(report, small, Precision::F32, 1e-4);
  check_generation_case(report, flash, Precision::BF16, 5e-2);
}

// Training with frozen parameters (ModelOptions::frozen: one trained parameter group that skips
// some of the table), CPU against GPU: the embedding, the bottom layer's attention and the
// head frozen, so the group is not one run of the table and the offloaded step's chunks (odd
// sized) copy its weights up in pieces.
void run_frozen_checks(Report& report, const std::string& only) {
  if (std::string("frozen").rfind(only, 0) != 0) return;
  std::printf("\n== frozen-parameter checks (CPU MistralModel vs CudaMistralModel, a trained group)\n");
  const MistralConfig small = tiny_config(32, false);
  const Batch sft = packed_batch({20, 14, 10}, 3, small.vocab_size, small.pad_token_id);
  const Batch dpo = packed_batch({12, 10, 11, 9}, 4, small.vocab_size, small.pad_token_id);
  const std::vector<std::string> frozen = {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                                           "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight",
                                           "model.layers.1.post_attention_layernorm.weight", "model.norm.weight",
                                           "lm_head.weight"};
  check_training(report, {"D32 frozen", small, Precision::F32, false, false, frozen}, sft, dpo);
  check_training(report, {"D32 frozen", small, Precision::BF16, false, false, frozen}, sft, dpo);
  setenv("ZN_OFFLOAD_CHUNK", kOffloadChunkForChecks, 1);
  check_training(report, {"D32 frozen", small, Precision::BF16, false, true, frozen}, sft, dpo);
  check_training(report, {"D32 frozen", small, Precision::F32, true, true, frozen}, sft, dpo);
  unsetenv("ZN_OFFLOAD_CHUNK");
}

// LoRA (model/lora.h) trained on both devices over a frozen base: every projection adapted (r 8),
// and q/v/down with rsLoRA beside a trained final norm (two trained groups, one clip norm), in
// f32 and bf16, on the device and offloaded; the bf16 ones with lora_dropout 0.1.
void run_lora_checks(Report& report, const std::string& only) {
  if (std::string("lora").rfind(only, 0) != 0) return;
  std::printf("\n== LoRA checks (CPU MistralModel vs CudaMistralModel, adapters over a frozen base)\n");
  const MistralConfig small = tiny_config(32, false);
  const Batch sft = packed_batch({20, 14, 10}, 3, small.vocab_size, small.pad_token_id);
  const Batch dpo = packed_batch({12, 10, 11, 9}, 4, small.vocab_size, small.pad_token_id);
  std::vector<std::string> base, all_but_norm;
  for (const ParameterSpec& p : model::parameter_table(small)) {
    base.push_back(p.name);
    if (p.name != "model.norm.weight") all_but_norm.push_back(p.name);
  }
  const model::LoraConfig every{8, 16.0, false, {"all-linear"}, {}, 0, 0},
      some{4, 8.0, true, {"q_proj", "v_proj", "down_proj"}, {}, 0, 0};
  // lora_dropout: both devices draw the same masks (kernels/cpu/dropout.h), so they still agree.
  model::LoraConfig every_dropout = every, some_dropout = some;
  every_dropout.dropout = some_dropout.dropout = 0.1;
  every_dropout.dropout_seed = some_dropout.dropout_seed = 42;
  check_training(report, {"D32 LoRA all-linear", small, Precision::F32, false, false, base, every}, sft, dpo);
  check_training(report, {"D32 LoRA all-linear dropout", small, Precision::BF16, false, false, base, every_dropout},
                 sft, dpo);
  check_training(report, {"D32 LoRA q/v/down + norm dropout", small, Precision::BF16, true, false, all_but_norm,
                          some_dropout},
                 sft, dpo);
  setenv("ZN_OFFLOAD_CHUNK", kOffloadChunkForChecks, 1);
  check_training(report, {"D32 LoRA q/v/down + norm", small, Precision::BF16, false, true, all_but_norm, some}, sft,
                 dpo);
  unsetenv("ZN_OFFLOAD_CHUNK");
}

// ZeRO on the GPU model (zero_shard.h), two ranks emulated in one process: models sharded {0,2}
// and {1,2} take the same batches as an unsharded model (so each holds what the gradient
// all-reduce would give every rank), each steps its range (after the first step, before the
// copy, exactly its own ranges of the weights have moved), and the owners' ranges of the device
// weights are then copied to the other model (what the NCCL all-gather does). After two steps
// each sharded model's device weights (f32; or the bf16 rounding and the f32 norms) equal the
// unsharded model's bit for bit, and so do the log-probs and grad norms on the way; the shard
// sums of squares add up to the whole sum (ZeRO stage 2's grad norm, to rounding). The two shard
// files then load into a CPU model and into an unsharded GPU model, whose optimizer state (and
// bf16 master) equals the unsharded GPU model's bit for bit.
std::vector<std::vector<unsigned char>> device_weights(const CudaMistralModel& m) {
  std::vector<std::vector<unsigned char>> out;
  for (const model::WeightSegment& w : m.weight_segments()) {
    out.emplace_back(w.count * (w.bf16 ? sizeof(bf16) : sizeof(float)));
    ZN_CUDA_CHECK(cudaMemcpy(out.back().data(), w.data, out.back().size(), cudaMemcpyDeviceToHost));
  }
  return out;
}

// Emulated all-gather: each range of `from`'s device weights that `from` owns, into `to`'s.
void copy_owned_weights(const CudaMistralModel& from, const CudaMistralModel& to) {
  const std::vector<model::WeightSegment> src = from.weight_segments(), dst = to.weight_segments();
  const int rank = from.options().shard.rank;
  for (size_t i = 0; i < src.size(); ++i) {
    const size_t width = src[i].bf16 ? sizeof(bf16) : sizeof(float);
    size_t offset = 0;
    for (int r = 0; r < rank; ++r) offset += src[i].counts[size_t(r)];
    ZN_CUDA_CHECK(cudaMemcpy(static_cast<char*>(dst[i].data) + offset * width,
                             static_cast<const char*>(src[i].data) + offset * width, src[i].counts[size_t(rank)] * width,
                             cudaMemcpyDeviceToDevice));
  }
}

size_t differing_bytes(const std::vector<std::vector<unsigned char>>& a, const std::vector<std::vector<unsigned char>>& b) {
  if (a.size() != b.size()) return 1;
  size_t differing = 0;
  for (size_t i = 0; i < a.size(); ++i)
    differing += a[i].size() != b[i].size() || std::memcmp(a[i].data(), b[i].data(), a[i].size()) != 0;
  return differing;
}

// How many ranges of a sharded model's device weights break "only the owned ranges moved": an
// owned range equal to `before`, or another rank's range that differs from it (before the all-gather).
size_t ranges_out_of_place(const CudaMistralModel& m, const std::vector<std::vector<unsigned char>>& before) {
  const std::vector<model::WeightSegment> segments = m.weight_segments();
  const std::vector<std::vector<unsigned char>> after = device_weights(m);
  size_t wrong = 0;
  for (size_t i = 0; i < segments.size(); ++i) {
    const size_t width = segments[i].bf16 ? sizeof(bf16) : sizeof(float);
    size_t offset = 0;
    for (size_t r = 0; r < segments[i].counts.size(); offset += segments[i].counts[r], ++r) {
      const size_t bytes = segments[i].counts[r] * width;
      if (bytes == 0) continue;
      const bool moved = std::memcmp(before[i].data() + offset * width, after[i].data() + offset * width, bytes) != 0;
      wrong += moved != (int(r) == m.options().shard.rank);
    }
  }
  return wrong;
}

size_t differing_tensors(const std::string& a_path, const std::string& b_path) {
  SafetensorsFile a(a_path), b(b_path);
  size_t differing = a.tensors().size() == b.tensors().size() ? 0 : 1;
  for (const StTensorInfo& t : a.tensors()) {
    const StTensorInfo* u = b.find(t.name);
    differing += !u || u->bytes() != t.bytes() || std::memcmp(a.data(t), b.data(*u), t.bytes()) != 0;
  }
  return differing;
}

void check_zero_case(Report& report, const MistralConfig& c, Precision precision, bool offload, const Batch& sft) {
  const std::string what = std::string(precision == Precision::BF16 ? "bf16" : "f32") + (offload ? " offload" : "");
  guarded(report, "zero", what, [&] {
    TempFile weights(".safetensors"), whole_state(".st"), shard0(".st"), shard1(".st"), cpu_state(".st"), gpu_state(".st");
    write_random_weights(c, weights.path);
    ModelOptions options = model_options(precision, kMaxTokens, false, true, offload);
    CudaMistralModel whole(c, options);
    options.shard = {0, 2};
    CudaMistralModel a(c, options);
    options.shard = {1, 2};
    CudaMistralModel b(c, options);
    CudaMistralModel* models[] = {&whole, &a, &b};
    for (CudaMistralModel* m : models) m->load_weights({weights.path});
    std::vector<float> dlogp(sft.ids.size(), 0.0f);
    for (size_t t = 0; t < dlogp.size(); ++t) dlogp[t] = sft.targets[t] != -100 ? -0.05f : 0.0f;
    size_t logp_differing = 0, norm_differing = 0, weights_differing = 0, out_of_place = 0;
    double squares_error = 0;
    const auto initial = device_weights(whole);
    for (int step = 0; step < 2; ++step) {
      std::vector<std::vector<float>> logp(3, std::vector<float>(sft.ids.size()));
      double norms[3], whole_squares = 0, shard_squares = 0;
      for (int i = 0; i < 3; ++i) {
        models[i]->zero_grad();
        models[i]->forward_backward(sft.view(), dlogp.data(), logp[size_t(i)].data());
        if (i > 0) shard_squares += models[i]->shard_grad_sum_of_squares();
        norms[i] = models[i]->clip_and_step(kAdamW);
      }
      whole_squares = norms[0] * norms[0];
      squares_error = std::max(squares_error, relative(shard_squares, whole_squares));
      if (step == 0) out_of_place = ranges_out_of_place(a, initial) + ranges_out_of_place(b, initial);
      copy_owned_weights(a, b);
      copy_owned_weights(b, a);
      const auto reference = device_weights(whole);
      for (int i = 1; i < 3; ++i) {
        logp_differing += std::memcmp(logp[0].data(), logp[size_t(i)].data(), logp[0].size() * sizeof(float)) != 0;
        norm_differing += norms[0] != norms[i];
        weights_differing += differing_bytes(reference, device_weights(*models[i]));
      }
    }
    report.compare("zero", what + ": shards {0,2},{1,2} vs unsharded, 2 steps: log-probs differing", "bits",
                   double(logp_differing), 0.0);
    report.compare("zero", what + ": grad norms differing", "bits", double(norm_differing), 0.0);
    report.compare("zero", what + ": first step, weight ranges moved that a rank does not own (or owned ones not)", "count",
                   double(out_of_place), 0.0);
    report.compare("zero", what + ": device weight runs differing after the emulated all-gather", "bits",
                   double(weights_differing), 0.0);
    report.compare("zero", what + ": sum of the shards' sums of squares vs the whole (stage 2's norm)", "rel",
                   squares_error, 1e-12);

    whole.save_optimizer_state(whole_state.path);
    a.save_optimizer_shard(shard0.path);
    b.save_optimizer_shard(shard1.path);
    MistralModel cpu(c, model_options(precision, kMaxTokens, false, true));
    cpu.load_weights({weights.path});
    cpu.load_optimizer_state(std::vector<std::string>{shard0.path, shard1.path});
    cpu.save_optimizer_state(cpu_state.path);
    CudaMistralModel gpu(c, model_options(precision, kMaxTokens, false, true, offload));
    gpu.load_weights({weights.path});
    gpu.load_optimizer_state(std::vector<std::string>{shard0.path, shard1.path});
    gpu.save_optimizer_state(gpu_state.path);
    report.compare("zero", what + ": GPU shard files -> CPU model: moments differing from unsharded", "bits",
                   double(differing_tensors(whole_state.path, cpu_state.path)), 0.0);
    report.compare("zero", what + ": GPU shard files -> unsharded GPU model: moments differing", "bits",
                   double(differing_tensors(whole_state.path, gpu_state.path)), 0.0);
    report.compare("zero", what + ": step read from the shard files", "1",
                   std::fabs(double(cpu.optimizer_step()) - 2.0) + std::fabs(double(gpu.optimizer_step()) - 2.0), 0.0);
    if (precision == Precision::BF16) {  // the f32 master travels in bf16 shard files
      const auto want = read_all(whole, false), from_cpu = read_all(cpu, false), from_gpu = read_all(gpu, false);
      size_t differing = 0;
      for (size_t p = 0; p < want.size(); ++p) {
        differing += std::memcmp(want[p].data(), from_cpu[p].data(), want[p].size() * sizeof(float)) != 0;
        differing += std::memcmp(want[p].data(), from_gpu[p].data(), want[p].size() * sizeof(float)) != 0;
      }
      report.compare("zero", what + ": f32 master from the shard files (CPU and GPU) vs unsharded", "bits",
                     double(differing), 0.0);
    }
  });
}

void run_zero_checks(Report& report, const std::string& only) {
  if (std::string("zero").rfind(only, 0) != 0) return;
  std::printf("\n== ZeRO checks (CudaMistralModel sharded {0,2} and {1,2} vs unsharded, and shard files)\n");
  const MistralConfig small = tiny_config(32, false);
  const Batch sft = packed_batch({20, 14, 10}, 3, small.vocab_size, small.pad_token_id);
  check_zero_case(report, small, Precision::F32, false, sft);
  check_zero_case(report, small, Precision::BF16, false, sft);
  setenv("ZN_OFFLOAD_CHUNK", kOffloadChunkForChecks, 1);  // chunks that split parameters and the shard ranges
  check_zero_case(report, small, Precision::BF16, true, sft);
  unsetenv("ZN_OFFLOAD_CHUNK");
}

void run_model_checks(Report& report, const std::string& only, bool quick) {
  if (std::string("model").rfind(only, 0) != 0) return;  // --only: a prefix of the name, as the op checks
  std::printf("\n== model checks (CPU MistralModel vs CudaMistralModel, GEMMs %s)\n",
              gemm_impl_name(gemm_auto_impl(DType::BF16, DType::BF16, DType::F32)));
  const MistralConfig small = tiny_config(32, false), flash = tiny_config(64, true);
  const Batch sft = packed_batch({20, 14, 10}, 3, small.vocab_size, small.pad_token_id);
  const Batch dpo = packed_batch({12, 10, 11, 9}, 4, small.vocab_size, small.pad_token_id);
  std::vector<ModelCase> cases = {
      {"D32", small, Precision::F32, false},
      {"D32", small, Precision::F32, true},
      {"D32", small, Precision::BF16, false},
      {"D32", small, Precision::BF16, true},
      {"D64 tied (flash)", flash, Precision::BF16, false},
  };
  if (!quick) cases.push_back({"D64 tied", flash, Precision::F32, true});
  for (const ModelCase& mc : cases) check_training(report, mc, sft, dpo);
  check_files(report, small, sft, false);
  check_frozen(report, small, sft);
  check_errors(report, small, sft);
  // The same with the optimizer on the host, its step pipelined over odd-sized chunks.
  setenv("ZN_OFFLOAD_CHUNK", kOffloadChunkForChecks, 1);
  std::vector<ModelCase> offloaded = {
      {"D32", small, Precision::F32, false, true},
      {"D32", small, Precision::BF16, true, true},
  };
  if (!quick) offloaded.push_back({"D64 tied (flash)", flash, Precision::BF16, false, true});
  for (const ModelCase& mc : offloaded) check_training(report, mc, sft, dpo);
  check_files(report, small, sft, true);
  check_dpo_step(report, flash);
  unsetenv("ZN_OFFLOAD_CHUNK");
}

#else

void run_model_checks(Report&, const std::string& only, bool) {
  if (std::string("model").rfind(only, 0) != 0) return;
  std::printf("\n== model checks skipped: they need the CPU model (built with ZN_CUDA_CHECK_CPU=ON)\n");
}

void run_zero_checks(Report&, const std::string& only) {
  if (std::string("zero").rfind(only, 0) != 0) return;
  std::printf("\n== ZeRO checks skipped: they need the CPU model (built with ZN_CUDA_CHECK_CPU=ON)\n");
}

void run_lora_checks(Report&, const std::string& only) {
  if (std::string("lora").rfind(only, 0) != 0) return;
  std::printf("\n== LoRA checks skipped: they need the CPU model (built with ZN_CUDA_CHECK_CPU=ON)\n");
}

void run_frozen_checks(Report&, const std::string& only) {
  if (std::string("frozen").rfind(only, 0) != 0) return;
  std::printf("\n== frozen-parameter checks skipped: they need the CPU model (built with ZN_CUDA_CHECK_CPU=ON)\n");
}

void run_generation_checks(Report&, const std::string& only) {
  if (std::string("generation").rfind(only, 0) != 0) return;
  std::printf("\n== generation checks skipped: they need the CPU model (built with ZN_CUDA_CHECK_CPU=ON)\n");
}

void run_lora_plan(Report&, const std::string& only) {
  if (!only.empty() && std::string("lora-plan").rfind(only, 0) != 0) return;
  std::printf("\n== LoRA plan skipped: the GPU model needs zn_core (built with ZN_CUDA_CHECK_CPU=ON)\n");
}

void run_model_timing(Report&, const std::string& only) {
  if (!only.empty() && std::string("step7b").rfind(only, 0) != 0) return;
  std::printf("\n== Mistral-7B step skipped: the GPU model needs zn_core (built with ZN_CUDA_CHECK_CPU=ON)\n");
}

#endif

}  // namespace zn::cuda::check
