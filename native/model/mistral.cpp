// The Mistral model on the CPU: parameters, gradients, AdamW and files here; forward and backward
// are the one decoder (decoder.cpp) on CpuBackend. Memory: the plan's buffers are allocated in
// the constructor; a call adds the kernels' own scratch (the log-prob chunks where the plan has
// no dead bytes for them, GEMM panels, the attention forward's key tiles and the backward's
// operands beyond N / 256 documents), next_token_logits its [docs, d] rows, and
// an untied embedding's row gradient grows as gradient accumulation touches new rows
// (row_gradient.h).
#include "model/mistral.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "core/errors.h"
#include "core/memory.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/logprob.h"
#include "model/row_gradient.h"
#include "model/safetensors.h"

namespace zn::model {

// ---------------------------------------------------------------------------------------------
// Activation plan: the decoder's buffers (decoder.h) in one arena, laid out from one buffer table
// (plan_activations, buffer_plan.h) for planning and allocating alike.
//
// Selective recomputation (as Megatron-LM's, the CPU's Recompute policy): a layer keeps what a
// GEMM or attention produced and recomputes in backward what elementwise work gives back
// exactly: the rmsnorm outputs n1, n2 and act = silu(gate) * up. Those values, and the
// backward's scratch, live in buffers shared by all layers. One GEMM output is recomputed too,
// because it needs no buffer of its own: h = x + o_proj(attn) is rebuilt in the next layer's
// input buffer, which is dead by the time the layer's backward runs (one o_proj GEMM more per
// layer, ~1.7% of a step's FLOPs on the small bench preset, for [N, d] less per layer).
// q, k, v and the attention output are recomputed as well (q_proj, k_proj, v_proj, the ropes
// and the attention forward from n1: ~4.5% of a step's FLOPs on the small preset, where they would
// hold [N, 2 q_dim + 2 kv_dim] per layer): all layers write them to one shared set of buffers,
// which still holds the top layer's when its backward starts.
// So are gate and up (gate_proj and up_proj from n2: two of a layer's seven projections, ~8% of
// a step's FLOPs on the small preset), which held [N, 2 ffn] per layer, more than half of the
// activations: every layer writes them to the region the top layer's would take, and each
// backward rebuilds its layer's there (on the small preset's SFT step, 154 MiB less planned).
//
// Aliases, each dead before the next use of its buffer (the table's Over and InPlace entries;
// one entry where the uses alternate within every layer):
// - normed [N, d]: n1, n2 and the final norm's output (which next_token_logits reads after a
//   forward), and rmsnorm backward's dx.
// - act [N, max(ffn, d, Hq * D)]: act, then in backward dact (down_proj's dx, once its weight
//   gradient has read act), dnorm (d loss / d n2), dattn, dnorm (d loss / d n1). A frozen model
//   writes act over gate, which nothing reads again.
// - gate and up (every layer's, in one region): backward overwrites them with dgate and dup, and
//   once the MLP's backward has read those, with dq, dk, dv and the attention backward's packed
//   operands (DecoderBuffers::attention_backward).
// - the one-pass lm_head's logits panel: the top slot's gate/up region, act and dres, back to
//   back. All are dead while the lm_head runs except the top layer's gate and up, which every
//   backward then recomputes from n2 (two GEMMs of one layer, against a 32 MiB panel of its own
//   on the small preset; the unfused head does not use the panel, but the table's lifetimes are
//   one for every call).

namespace {

// The CPU's kernels read 64-byte aligned rows.
constexpr size_t kAlignment = 64;

int saved_layer_slots(const MistralConfig& c, const ModelOptions& o) {
  return o.trainable && !o.gradient_checkpointing ? c.num_layers : 1;
}

cpu::AttentionShape attention_shape(const MistralConfig& c, long tokens) {
  return {tokens, c.num_heads, c.num_kv_heads, c.head_dim, c.sliding_window, 1.0f / std::sqrt(float(c.head_dim))};
}

cpu::LogprobShape head_shape(const MistralConfig& c, const ModelOptions& o) {
  return {o.max_tokens, c.hidden_size, c.vocab_size};
}

// The two-pass head's scratch (logprob_forward's, and a trainable model's logprob_backward's).
size_t head_chunk_bytes(const MistralConfig& c, const ModelOptions& o) {
  const size_t forward = cpu::logprob_scratch_bytes(head_shape(c, o), false);
  return o.trainable ? std::max(forward, cpu::logprob_scratch_bytes(head_shape(c, o), true)) : forward;
}

}  // namespace

// In the arena's order. Gate and up, then over them in each layer's backward dgate and dup and
// then dq, dk, dv, share one region (one for every layer when each keeps a slot: Recompute::
// shared_mlp); a slot's other values are kept from their layer's forward to its backward (a
// frozen model's: to the end of the forward).
BufferPlan plan_activations(const MistralConfig& c, const ModelOptions& o, void* base, DecoderBuffers& a) {
  const size_t N = size_t(o.max_tokens), d = size_t(c.hidden_size), f = sizeof(float);
  const size_t qd = size_t(c.q_dim()), kvd = size_t(c.kv_dim()), ffn = size_t(c.intermediate_size);
  const StepPhases P{c.num_layers};
  const int top = c.num_layers - 1;
  const bool train = o.trainable;
  const int forward_end = P.forward(top), step_end = train ? P.backward(0) : forward_end;
  BufferPlan plan(kAlignment);
  auto at = [&](int id) { return place<float>(base, plan, id); };
  auto name = [](const char* what, size_t i) { return std::string(what) + "." + std::to_string(i); };
  auto padded = [](size_t floats) { return (floats + kAlignment / 4 - 1) / (kAlignment / 4) * (kAlignment / 4); };

  a.residual.resize(train ? size_t(c.num_layers) + 1 : 2);
  for (size_t i = 0; i < a.residual.size(); ++i)
    a.residual[i] = at(plan.add(name("residual", i), N * d * f, P.residual(i, train)));
  a.layers.resize(size_t(saved_layer_slots(c, o)));
  const bool shared_attention = a.layers.size() > 1;
  // Every layer's gate and up in one region as well (recomputed in each backward), placed where
  // the last slot's would be, so that the lm_head's panel still starts over it.
  const bool shared_mlp = a.layers.size() > 1;
  const Lifetime step{P.forward(0), P.backward(0)};
  float* const shared_q = shared_attention ? at(plan.add("shared_q", N * qd * f, step)) : nullptr;
  float* const shared_attn = shared_attention ? at(plan.add("shared_attn", N * qd * f, step)) : nullptr;
  float* const shared_k = shared_attention ? at(plan.add("shared_k", N * kvd * f, step)) : nullptr;
  float* const shared_v = shared_attention ? at(plan.add("shared_v", N * kvd * f, step)) : nullptr;
  // Pieces of one region, each aligned.
  const size_t gate_floats = padded(N * ffn), dq_floats = padded(N * qd), dk_floats = padded(N * kvd);
  // The attention backward's packed operands follow its gradients (each kernel allocates its own
  // per call where more than N / 256 documents need more).
  const size_t attention_scratch =
      train ? cpu::attention_backward_scratch_bytes(attention_shape(c, long(N)), std::max(1L, long(N) / 256)) : 0;
  const size_t gate_up = 2 * gate_floats * f, attention_grads = (dq_floats + 2 * dk_floats) * f + attention_scratch;
  const size_t region = std::max(gate_up, attention_grads);
  int top_mlp = -1;  // the last slot's gate/up region, which the lm_head's panel starts over
  for (size_t i = 0; i < a.layers.size(); ++i) {
    LayerSlot& s = a.layers[i];
    const bool one_slot = a.layers.size() == 1, last_slot = i + 1 == a.layers.size();
    const Lifetime kept = P.slot(i, a.layers.size(), train);
    s.rstd1 = at(plan.add(name("rstd1", i), N * f, kept));
    s.q = f32(shared_attention ? shared_q : at(plan.add(name("q", i), N * qd * f, kept)));
    s.k = f32(shared_attention ? shared_k : at(plan.add(name("k", i), N * kvd * f, kept)));
    s.v = f32(shared_attention ? shared_v : at(plan.add(name("v", i), N * kvd * f, kept)));
    s.attn = f32(shared_attention ? shared_attn : at(plan.add(name("attn", i), N * qd * f, kept)));
    s.lse = at(plan.add(name("lse", i), size_t(c.num_heads) * N * f, kept));
    s.rstd2 = at(plan.add(name("rstd2", i), N * f, kept));
    s.h = nullptr;
    if (shared_mlp && !last_slot) continue;  // its gate/up pointers are the last slot's, below
    const Lifetime mlp_live = shared_mlp ? step : kept;
    // Under the lm_head's panel the last slot's gate and up die with the forward, and the
    // backward recomputes them (Decoder::recompute_mlp_inputs) into the same bytes.
    const bool under_head = train && last_slot;
    const int mlp = plan.add(shared_mlp ? std::string("gate_up") : name("gate_up", i), region,
                             under_head ? Lifetime{mlp_live.first, forward_end} : mlp_live);
    const int backward_mlp = under_head ? plan.over(shared_mlp ? std::string("gate_up_recomputed") : name("gate_up_recomputed", i),
                                                    region, mlp, {P.backward(top), mlp_live.last})
                                        : mlp;
    if (train) {
      const Lifetime backward{one_slot || shared_mlp ? P.backward(top) : P.backward(int(i)), mlp_live.last};
      plan.in_place(shared_mlp ? std::string("attention_grads") : name("attention_grads", i), attention_grads,
                    backward_mlp, backward);
    }
    if (last_slot) top_mlp = mlp;
    float* const mlp_bytes = at(mlp);
    for (size_t j = shared_mlp ? 0 : i; j <= i; ++j) {
      LayerSlot& t = a.layers[j];
      t.gate = t.dgate = f32(mlp_bytes);
      t.up = t.dup = f32(mlp_bytes ? mlp_bytes + gate_floats : nullptr);
      t.dq = f32(mlp_bytes);
      t.dk = f32(mlp_bytes ? mlp_bytes + dq_floats : nullptr);
      t.dv = f32(mlp_bytes ? mlp_bytes + dq_floats + dk_floats : nullptr);
    }
    if (train) a.attention_backward = {mlp_bytes ? mlp_bytes + dq_floats + 2 * dk_floats : nullptr, attention_scratch};
  }
  Tensor act;
  int head_panel = -1;
  if (train) {
    // act in each forward; in each backward act again (recomputed), then dact (down_proj's dx,
    // once its weight gradient has read act), dnorm (d loss / d n2), dattn and dnorm (d loss / d
    // n1) in place; between them the unfused head's d loss / d (final norm output).
    const int act_id = plan.add("act", N * std::max({ffn, d, qd}) * f, {P.forward(0), forward_end});
    plan.over("dhidden", N * d * f, act_id, {P.head_backward(), P.final_norm_backward()});
    plan.over("layer_grads", N * std::max({ffn, d, qd}) * f, act_id, {P.backward(top), P.backward(0)});
    act = f32(at(act_id));
    a.dact = a.dattn = act;
    a.dnorm = at(act_id);
    const int dres = plan.add("dres", N * d * f, {P.final_norm_backward(), P.end()});
    a.dres = at(dres);
    a.dres_operand = f32(a.dres);
    // The one-pass lm_head's panel: the last slot's gate/up region, act and dres, back to back.
    head_panel = plan.over("lm_head_panel", plan.end(dres) - plan.offset(top_mlp), top_mlp, {P.head(), P.head()});
    a.head = {at(head_panel), plan.entries()[size_t(head_panel)].bytes};
    a.head_overwrites_top_mlp = true;
  }
  // The two-pass head's chunks where they fit in the last slot's gate/up region, dead across the
  // head (in place of the panel, which only the one-pass head uses); else the kernels allocate
  // them per call.
  const size_t chunks = head_chunk_bytes(c, o);
  if (chunks <= plan.entries()[size_t(top_mlp)].bytes) {
    const Lifetime heads{P.head(), train ? P.head_backward() : P.head()};
    const int id = train ? plan.in_place("logprob_chunks", chunks, head_panel, heads)
                         : plan.over("logprob_chunks", chunks, top_mlp, heads);
    a.head_chunks = {at(id), chunks};
  }
  a.final_rstd = at(plan.add("final_rstd", N * f, {P.final_norm(), train ? P.final_norm_backward() : P.final_norm()}));
  a.logit_lse = at(plan.add("logit_lse", N * f, {P.head(), train ? P.head_backward() : P.head()}));
  // n1, n2, the final norm's output (which the model reads after a forward for next-token
  // logits) and rmsnorm backward's dx, each dead before the next is written.
  const Tensor normed = f32(at(plan.add("normed", N * d * f, {P.forward(0), train ? P.backward(0) : P.head()})));
  a.final_norm = normed;
  a.dnorm_x = static_cast<float*>(normed.data);
  // A frozen model writes act over gate, which nothing reads again.
  if (!train) act = f32(at(plan.in_place("act", N * ffn * f, top_mlp, {P.forward(0), forward_end})));
  // LoRA's [N, r] pair, which every projection recomputes where it needs it.
  const size_t r = size_t(o.lora.rank);
  const Tensor lora_t = r ? f32(at(plan.add("lora_t", N * r * f, {P.forward(0), step_end}))) : Tensor{};
  const Tensor lora_dt =
      r && train ? f32(at(plan.add("lora_dt", N * r * f, {P.backward(top), P.backward(0)}))) : Tensor{};
  // lora_dropout's dropped input, for the widest projection input (training only): written in each
  // projection's forward and again (the same mask) in its backward.
  const bool dropout = r && train && o.lora.dropout > 0;
  const Tensor lora_x =
      dropout ? f32(at(plan.add("lora_x", N * std::max({d, qd, ffn}) * f, {P.forward(0), P.backward(0)}))) : Tensor{};
  for (LayerSlot& s : a.layers) {
    s.norm1 = s.norm2 = normed;
    s.act = act;
    s.lora_t = lora_t;
    s.lora_dt = lora_dt;
    s.lora_x = lora_x;
  }
  plan.check();
  return plan;
}

MemoryPlan plan_memory(const MistralConfig& c, const ModelOptions& o) {
  c.validate();
  ZN_CHECK(o.max_tokens > 0, "model: maxTokens must be positive, got ", o.max_tokens);
  const std::vector<ParameterSpec> table = parameter_table(c);
  const ParameterGroup trained(table, o.frozen);
  const size_t params = o.trainable ? trained.numel() : 0;
  // ZeRO: the moments (and bf16 mode's master) of this rank's range only; gradients stay whole.
  const size_t owned = shard_range(params, o.shard).size();
  MemoryPlan plan;
  // The weights the kernels read, and a trainable bf16 model's f32 master (CpuTrainState's).
  plan.weights = CpuWeights::bytes(table, o.precision) + (o.precision == Precision::BF16 ? owned * 4 : 0);
  // An untied embedding's gradient is held by rows (model/row_gradient.h), with slots for one
  // micro-batch's tokens; gradient accumulation over new tokens adds rows beyond the plan.
  const size_t embed = size_t(c.vocab_size) * size_t(c.hidden_size);
  const bool row_embedding =
      o.trainable && !c.tie_word_embeddings && !o.dense_embedding_gradient && trained.contains(table.front());
  plan.grads = row_embedding ? (params - embed) * 4 + RowGradient::planned_bytes(c.vocab_size, c.hidden_size, o.max_tokens)
                             : params * 4;
  plan.optimizer = owned * 8;
  if (o.lora.rank > 0) {  // the adapters: weights, and when trainable a group's state
    const LoraTable lora(table, o.lora);
    const size_t adapter = parameter_count(lora.parameters()), trained_adapter = o.trainable ? adapter : 0;
    const size_t owned_adapter = shard_range(trained_adapter, o.shard).size();
    plan.weights += CpuWeights::bytes(lora.parameters(), o.precision) +
                    (o.precision == Precision::BF16 ? owned_adapter * 4 : 0);
    plan.grads += trained_adapter * 4;
    plan.optimizer += owned_adapter * 8;
  }
  DecoderBuffers counting;
  plan.activations = plan_activations(c, o, nullptr, counting).total();
  // What the log-prob kernels allocate per call beside the table: the two-pass head's chunks
  // where the table has no room for them (DecoderBuffers::head_chunks), the one-pass head's
  // panel where 16 rows do not fit in DecoderBuffers::head (else its labelled-token list).
  const cpu::LogprobShape head = head_shape(c, o);
  size_t fused = cpu::logprob_fused_scratch_bytes(head);
  if (counting.head.bytes / sizeof(float) >= cpu::logprob_fused_workspace_floats(head, 16))
    fused = size_t(o.max_tokens) * sizeof(long);
  const size_t chunks = counting.head_chunks.bytes > 0 ? 0 : head_chunk_bytes(c, o);
  plan.logits_chunks = o.trainable ? std::max(chunks, fused) : chunks;
  return plan;
}

std::string gib(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f GiB", double(bytes) / double(size_t(1) << 30));
  return text;
}

std::string plan_breakdown(const MemoryPlan& plan, const ModelOptions& o) {
  return "weights " + gib(plan.weights) + " + grads " + gib(plan.grads) + " + optimizer " +
         gib(plan.optimizer) + " + activations " + gib(plan.activations) + " + workspaces " +
         gib(plan.logits_chunks) + " (maxTokens " + std::to_string(o.max_tokens) + ", dtype " +
         (o.precision == Precision::BF16 ? "bf16" : "f32") + ", gradientCheckpointing " +
         (o.gradient_checkpointing ? "on" : "off") + ")";
}

void check_host_memory(size_t needed, const std::string& what, const std::string& advice) {
  const size_t available = available_host_memory();
  ZN_CHECK(available == 0 || needed <= available, "model: ", what, " needs ", gib(needed),
           " of host memory, and ", gib(available), " is available; try ", advice);
}

// ---------------------------------------------------------------------------------------------
// Construction

MistralModel::MistralModel(const MistralConfig& config, const ModelOptions& options)
    : config_(config), options_(options) {
  plan_ = plan_memory(config_, options_);
  std::string advice;
  if (options_.trainable && !options_.gradient_checkpointing) {
    ModelOptions checkpointed = options_;
    checkpointed.gradient_checkpointing = true;
    advice = "gradientCheckpointing: true (activations " + gib(plan_memory(config_, checkpointed).activations) + "), ";
  }
  check_host_memory(plan_.total(), "the memory plan (" + plan_breakdown(plan_, options_) + ")",
                    advice + "a smaller maxTokens, or the GPU backend (device: 'cuda')");
  Owners& o = owners_;
  o.params = parameter_table(config_);
  o.index = index_parameters(config_, o.params);
  o.trained = std::make_unique<ParameterGroup>(o.params, options_.frozen);
  o.weights = std::make_unique<CpuWeights>(o.params, options_.precision);
  if (options_.trainable && o.trained->numel() > 0)
    o.state = std::make_unique<CpuTrainState>(config_, *o.trained, o.index, options_.max_tokens, *o.weights,
                                              options_.dense_embedding_gradient, options_.shard);
  if (options_.lora.rank > 0) {
    o.lora = std::make_unique<LoraTable>(o.params, options_.lora);
    o.adapter_group = std::make_unique<ParameterGroup>(o.lora->parameters());
    o.adapter_weights = std::make_unique<CpuWeights>(o.lora->parameters(), options_.precision);
    if (options_.trainable) {
      o.adapter_state = std::make_unique<CpuTrainState>(config_, *o.adapter_group, o.index, options_.max_tokens,
                                                        *o.adapter_weights, options_.dense_embedding_gradient,
                                                        options_.shard);
    }
  }
  o.link();
  buffers_ = std::make_unique<DecoderBuffers>();
  arena_.reset(static_cast<float*>(std::calloc(plan_.activations / 4, sizeof(float))));
  ZN_CHECK(arena_ || plan_.activations == 0, "model: cannot allocate ", plan_.activations,
           " bytes of activations");
  buffer_plan_ = std::make_unique<BufferPlan>(plan_activations(config_, options_, arena_.get(), *buffers_));
  buffers_->plan = buffer_plan_.get();
  buffers_->base = arena_.get();
  buffers_->poison = poison_ended_buffers();
  // The CPU keeps per layer only its input and per-row values (see the activation plan above).
  const Recompute recompute{/*norms=*/true, /*mlp_act=*/true, /*h=*/true,
                            /*shared_attention=*/buffers_->layers.size() > 1, /*shared_mlp=*/buffers_->layers.size() > 1};
  decoder_ = std::make_unique<Decoder>(config_, owners_.index, backend_, recompute);
  if (owners_.lora) decoder_->set_adapters(&owners_.adapters);
  const size_t N = size_t(options_.max_tokens);
  input_ids_.resize(N);
  position_ids_.resize(N);
  targets_.resize(N);
  cu_seqlens_.resize(N + 1);
}

MistralModel::~MistralModel() = default;

void MistralModel::FreeDeleter::operator()(float* p) const { std::free(p); }


void MistralModel::merge_adapters() {
  ZN_CHECK(owners_.lora, "model: mergeAdapters() on a model without LoRA adapters");
  const LoraConfig& lora = owners_.lora->config();
  for (const ParameterSpec& p : owners_.params) {
    const LoraPair* pair = owners_.lora->pair(p);
    if (!pair) continue;
    const float* a = f32_values(*pair->a);
    const float* b = f32_values(*pair->b);
    float* w = const_cast<float*>(f32_values(p));  // the master or f32 weights this model owns
    ZN_CHECK(a && b && w, "model: merging adapters needs f32 weights (dtype f32)");
    const long out = p.shape[0], in = p.shape[1];
    cpu::gemm(false, false, out, in, lora.rank, float(lora.scale()), {b, DType::F32, lora.rank}, {a, DType::F32, in},
              1.0f, w, in);
  }
  for (CpuTrainState* s : owners_.states()) s->publish();
  set_adapters_enabled(false);
}

void MistralModel::set_adapters_enabled(bool enabled) {
  ZN_CHECK(owners_.lora, "model: setAdaptersEnabled() on a model without LoRA adapters");
  have_activations_ = false;  // a backward must follow a forward with the same adapters
  decoder_->set_adapters(enabled ? &owners_.adapters : nullptr);
}

MemoryPlan MistralModel::plan(const MistralConfig& config, const ModelOptions& options) {
  return plan_memory(config, options);
}

std::vector<CpuTrainState*> MistralModel::train_states(const char* what) const {
  ZN_CHECK(options_.trainable, "model: ", what, " on a model created with trainable: false");
  return owners_.states();
}

std::vector<MistralModel::GradientBuffer> MistralModel::gradient_buffers() const {
  std::vector<GradientBuffer> out;
  for (CpuTrainState* s : train_states("gradient buffers")) {
    const auto [data, size] = s->dense_gradients();
    out.push_back({data, size});
  }
  return out;
}

// train_states() first: it refuses a model that is not trainable, naming what was asked.
std::vector<std::vector<size_t>> MistralModel::gradient_shard_counts() const {
  train_states("gradient shards");
  return owners_.gradient_shard_counts();
}

double MistralModel::shard_grad_sum_of_squares() const {
  train_states("a shard's gradient norm");
  return owners_.shard_grad_sum_of_squares();
}

std::vector<WeightSegment> MistralModel::weight_segments() const {
  train_states("weight segments");
  return owners_.weight_segments();
}

const float* MistralModel::master(const ParameterSpec& p) const {
  if (CpuTrainState* s = owners_.state_of(p)) return s->master(p);
  ZN_CHECK(!owners_.weights_of(p).is_bf16(), "model: a frozen bf16 parameter keeps no f32 master (read_master widens its weights)");
  return owners_.weights_of(p).f32_values(p);
}

// The f32 values, or a frozen bf16 model's bf16 weights widened.
void MistralModel::read_master(const ParameterSpec& p, float* out) const {
  if (const float* values = f32_values(p)) {
    std::memcpy(out, values, p.numel * sizeof(float));
    return;
  }
  owners_.weights_of(p).read(p, out);
}

void MistralModel::read_gradient(const ParameterSpec& p, float* out) const {
  ZN_CHECK(options_.trainable, "model: gradients exist only for a trainable model");
  CpuTrainState* s = owners_.state_of(p);
  ZN_CHECK(s, "model: '", p.name, "' is frozen (it belongs to no trained parameter group)");
  s->read_gradient(p, out);
}

long MistralModel::optimizer_step() const { return owners_.optimizer_step(); }

// A bf16 master sharded across ranks is not whole here: the weights' own then (the rounding,
// which every rank holds whole; a checkpoint's shard files carry the master).
const float* MistralModel::f32_values(const ParameterSpec& p) const {
  if (CpuTrainState* s = owners_.state_of(p)) {
    if (const float* whole = s->whole_master(p)) return whole;
  }
  return owners_.weights_of(p).f32_values(p);
}

// ---------------------------------------------------------------------------------------------
// Weights in and out

WeightFiles::WeightFiles(const std::vector<std::string>& files) : files_(files) {
  ZN_CHECK(!files.empty(), "model: no weight files given");
  for (const std::string& path : files) {
    opened_.push_back(std::make_unique<SafetensorsFile>(path));
    for (const StTensorInfo& t : opened_.back()->tensors()) {
      auto [it, fresh] = where_.emplace(t.name, opened_.back().get());
      ZN_CHECK(fresh, "model: tensor '", t.name, "' appears in both ", it->second->path(), " and ",
               path);
    }
  }
}

WeightFiles::~WeightFiles() = default;

void WeightFiles::read(const ParameterSpec& p, const std::string& stored, float* out) {
  auto it = where_.find(stored);
  ZN_CHECK(it != where_.end(), "model: parameter '", stored, "' is missing from the weight files (",
           files_.front(), files_.size() > 1 ? ", ..." : "", ")");
  it->second->read(stored, p.shape, DType::F32, out);
  where_.erase(it);
}

std::vector<std::string> WeightFiles::unread() const {
  std::vector<std::string> names;
  for (const auto& [name, file] : where_) names.push_back(name);
  return names;
}

void MistralModel::read_parameter(WeightFiles& files, const ParameterSpec& p, const std::string& stored,
                                  std::vector<float>& staging) {
  CpuTrainState* s = owners_.state_of(p);
  if (s && s->whole_master(p)) {
    files.read(p, stored, s->master(p));
    return;
  }
  // Frozen: into the weights (bf16: only the rounding is kept, and the norm weights in f32).
  staging.resize(p.numel);
  files.read(p, stored, staging.data());
  owners_.weights_of(p).assign(p, staging.data());
  if (s) s->assign_master(p, staging.data());  // a sharded bf16 master: its part
}

void MistralModel::read_parameters(WeightFiles& files, const std::vector<ParameterSpec>& table) {
  std::vector<float> staging;
  for (const ParameterSpec& p : table) read_parameter(files, p, p.name, staging);
  for (CpuTrainState* s : owners_.states()) s->publish();
  have_activations_ = false;
}

std::vector<std::string> MistralModel::load_weights(const std::vector<std::string>& files) {
  WeightFiles weights(files);
  read_parameters(weights, owners_.params);
  return weights.unread();
}

AdapterLoad MistralModel::load_adapters(const std::vector<std::string>& files) {
  ZN_CHECK(owners_.lora, "model: loadAdapters() on a model without LoRA adapters");
  WeightFiles weights(files);
  AdapterLoad out;
  std::vector<float> staging;
  for (const ParameterSpec* p : owners_.lora->saved_modules()) {
    const std::string stored = peft_saved_name(p->name);
    if (weights.has(stored)) {
      read_parameter(weights, *p, stored, staging);
    } else {
      out.absent.push_back(p->name);
    }
  }
  read_parameters(weights, owners_.lora->parameters());  // publishes every state
  out.unexpected = weights.unread();
  return out;
}

void MistralModel::save_weights(const std::string& path, const std::vector<std::string>& names,
                                SaveDType dtype, const std::map<std::string, std::string>& metadata) const {
  const StDType stored = dtype == SaveDType::F32 ? StDType::F32
                         : dtype == SaveDType::F16 ? StDType::F16 : StDType::BF16;
  std::vector<StTensorToWrite> tensors;
  for (const std::string& name : names) {
    const ParameterSpec& p = parameter(name);
    // Stored under the name asked for: a saved module's is PEFT's (base_model.model.<name>).
    if (const float* values = f32_values(p)) {
      tensors.push_back({name, stored, p.shape, values, StDType::F32});
    } else {
      tensors.push_back({name, stored, p.shape, owners_.weights_of(p).bf16_values(p), StDType::BF16});
    }
  }
  write_safetensors(path, tensors, metadata);
}

void MistralModel::save_optimizer_state(const std::string& path) const {
  ZN_CHECK(options_.trainable, "model: a frozen model has no optimizer state");
  std::vector<OptimizerMoments> groups;
  for (CpuTrainState* s : train_states("saving optimizer state")) groups.push_back(s->moments());
  write_optimizer_state(path, groups, optimizer_step());
}

void MistralModel::load_optimizer_state(const std::string& path) {
  load_optimizer_state(std::vector<std::string>{path});
}

void MistralModel::save_optimizer_shard(const std::string& path) const {
  ZN_CHECK(options_.trainable, "model: a frozen model has no optimizer state");
  owners_.save_optimizer_shard(path, options_.shard);
}

void MistralModel::load_optimizer_state(const std::vector<std::string>& paths) {
  ZN_CHECK(options_.trainable, "model: a frozen model has no optimizer state");
  owners_.load_optimizer_files(paths);
}


// ---------------------------------------------------------------------------------------------
// Forward

void validate_batch(const MistralConfig& config, const ModelOptions& options, const TokenBatchView& b) {
  ZN_CHECK(b.tokens > 0, "model: the batch has no tokens");
  ZN_CHECK(b.tokens <= options.max_tokens, "model: the batch has ", b.tokens,
           " tokens, more than maxTokens ", options.max_tokens);
  ZN_CHECK(b.n_docs >= 1, "model: cuSeqlens must hold at least 2 offsets");
  ZN_CHECK(b.cu_seqlens[0] == 0, "model: cuSeqlens[0] must be 0, got ", b.cu_seqlens[0]);
  for (int i = 1; i <= b.n_docs; ++i) {
    ZN_CHECK(b.cu_seqlens[i] > b.cu_seqlens[i - 1], "model: cuSeqlens must increase, but cuSeqlens[",
             i, "] = ", b.cu_seqlens[i], " after ", b.cu_seqlens[i - 1]);
  }
  ZN_CHECK(b.cu_seqlens[b.n_docs] == b.tokens, "model: the last cuSeqlens offset (",
           b.cu_seqlens[b.n_docs], ") must equal the token count ", b.tokens);
  const long V = config.vocab_size;
  for (long t = 0; t < b.tokens; ++t) {
    ZN_CHECK(b.input_ids[t] >= 0 && b.input_ids[t] < V, "model: inputIds[", t, "] = ", b.input_ids[t],
             " is outside the vocabulary [0, ", V, ")");
    ZN_CHECK(b.targets[t] == cpu::kIgnoreIndex || (b.targets[t] >= 0 && b.targets[t] < V),
             "model: targets[", t, "] = ", b.targets[t], " is neither -100 nor in [0, ", V, ")");
    ZN_CHECK(b.position_ids[t] >= 0, "model: positionIds[", t, "] = ", b.position_ids[t],
             " is negative");
  }
}

void MistralModel::copy_batch(const TokenBatchView& b) {
  validate_batch(config_, options_, b);
  tokens_ = b.tokens;
  n_docs_ = b.n_docs;
  std::memcpy(input_ids_.data(), b.input_ids, size_t(b.tokens) * 4);
  std::memcpy(position_ids_.data(), b.position_ids, size_t(b.tokens) * 4);
  std::memcpy(targets_.data(), b.targets, size_t(b.tokens) * 4);
  std::memcpy(cu_seqlens_.data(), b.cu_seqlens, size_t(b.n_docs + 1) * 4);
}

DeviceBatch MistralModel::batch() const {
  return {tokens_, n_docs_, input_ids_.data(), position_ids_.data(), targets_.data(), cu_seqlens_.data()};
}

void MistralModel::forward(const TokenBatchView& batch, float* logp) {
  ZN_CHECK(options_.trainable, "model: forward() keeps activations for backward, but this model "
           "was created with trainable: false; use logprobs()");
  have_activations_ = false;
  copy_batch(batch);
  decoder_->set_dropout(owners_.next_dropout_draw());  // a training forward
  decoder_->forward(this->batch(), *buffers_, *owners_.weights, true, logp);
  have_activations_ = true;
}

void MistralModel::logprobs(const TokenBatchView& batch, float* logp) {
  have_activations_ = false;  // the shared slots are overwritten
  copy_batch(batch);
  decoder_->set_dropout(nullptr);  // evaluation: no dropout
  decoder_->forward(this->batch(), *buffers_, *owners_.weights, false, logp);
}

void MistralModel::next_token_logits(const TokenBatchView& batch, float* logits) {
  have_activations_ = false;
  copy_batch(batch);
  decoder_->set_dropout(nullptr);  // evaluation: no dropout
  decoder_->trunk_forward(this->batch(), *buffers_, *owners_.weights, false);
  last_row_logits(cu_seqlens_.data(), n_docs_, logits);
}

void MistralModel::last_row_logits(const int32_t* cu_seqlens, int n, float* logits) const {
  const long d = config_.hidden_size;
  const float* normed = static_cast<const float*>(buffers_->final_norm.data);
  std::vector<float> last_rows(size_t(n) * size_t(d));
  for (int doc = 0; doc < n; ++doc) {
    const long row = cu_seqlens[size_t(doc) + 1] - 1;
    ZN_CHECK(row >= cu_seqlens[size_t(doc)], "model: next_token_logits: document ", doc, " is empty");
    std::copy_n(normed + row * d, d, last_rows.data() + size_t(doc) * size_t(d));
  }
  const ConstTensor head = owners_.weights->weight(*owners_.index.lm_head);
  cpu::gemm(false, true, n, config_.vocab_size, d, 1.0f, {last_rows.data(), DType::F32, d},
            {head.data, head.dtype, d}, 0.0f, logits, config_.vocab_size);
}

// ---------------------------------------------------------------------------------------------
// Generation

size_t MistralModel::generation_bytes(const MistralConfig& config, const ModelOptions&, int sequences,
                                      long max_context) {
  return KvCacheShape::for_model(config, max_context, sequences, DType::F32).bytes();  // f32 in every mode
}

void MistralModel::start_generation(int sequences, long max_context) {
  const KvCacheShape shape = KvCacheShape::for_model(config_, max_context, sequences, DType::F32);
  cache_.reset();
  cache_memory_.clear();
  cache_memory_.shrink_to_fit();
  check_host_memory(shape.bytes(), "the generation cache (" + gib(shape.bytes()) + ")",
                    "fewer sequences at once or a shorter context");
  cache_memory_.assign(shape.bytes() / sizeof(float), 0.0f);
  cache_ = std::make_unique<KvCache>(shape, cache_memory_.data());
  max_context_ = max_context;
}

KvCache& MistralModel::cache(const char* what) const {
  ZN_CHECK(cache_, "model: ", what, " before startGeneration()");
  return *cache_;
}

int MistralModel::acquire_sequence() { return cache("acquireSequence()").acquire(); }

void MistralModel::release_sequence(int slot) { cache("releaseSequence()").release(slot); }

void MistralModel::extend(const ExtendRequest& request, float* logits) {
  KvCache& kv = cache("extend()");
  have_activations_ = false;  // the shared slots are overwritten
  const ExtendPlan plan = plan_extend(kv, request, options_.max_tokens, config_.vocab_size, max_context_);
  const DeviceBatch batch{plan.tokens,          request.sequences,       request.tokens,
                          plan.positions.data(), plan.targets.data(),     plan.cu_seqlens.data()};
  const CachedStep step{&kv, plan.cache_rows.data(),
                        plan.keys(plan.cu_seqlens.data(), plan.positions.data(), plan.k_begin.data(),
                                  plan.k_len.data(), plan.k_positions.data()),
                        plan.keys_from_cache};
  decoder_->set_dropout(nullptr);  // evaluation: no dropout
  decoder_->forward_cached(batch, step, *buffers_, *owners_.weights);
  last_row_logits(plan.cu_seqlens.data(), request.sequences, logits);
}

// ---------------------------------------------------------------------------------------------
// Backward

void validate_dlogp(const float* dlogp, long tokens) {
  for (long t = 0; t < tokens; ++t) {
    ZN_CHECK(std::isfinite(dlogp[t]), "model: dlogp[", t, "] = ", dlogp[t], " is not finite");
  }
}

void MistralModel::backward(const float* dlogp, long tokens) {
  ZN_CHECK(options_.trainable, "model: backward() on a model created with trainable: false");
  ZN_CHECK(have_activations_, "model: backward() needs a forward() first (each forward serves one "
           "backward; logprobs() and loading weights discard saved activations)");
  ZN_CHECK(tokens == tokens_, "model: dlogp has ", tokens, " elements, but the last forward() had ",
           tokens_, " tokens");
  have_activations_ = false;
  validate_dlogp(dlogp, tokens_);
  decoder_->backward(batch(), *buffers_, *owners_.weights, *owners_.gradients, dlogp, options_.gradient_checkpointing);
  if (owners_.state) owners_.state->embedding_backward(tokens_, input_ids_.data(), buffers_->dres);
}

void MistralModel::forward_backward(const TokenBatchView& batch, const float* dlogp, float* logp) {
  ZN_CHECK(options_.trainable, "model: forwardBackward() on a model created with trainable: false");
  have_activations_ = false;
  copy_batch(batch);
  validate_dlogp(dlogp, tokens_);
  decoder_->set_dropout(owners_.next_dropout_draw());  // a training forward
  decoder_->forward_backward(this->batch(), *buffers_, *owners_.weights, *owners_.gradients, dlogp, logp,
                             options_.gradient_checkpointing);
  if (owners_.state) owners_.state->embedding_backward(tokens_, input_ids_.data(), buffers_->dres);
}

void MistralModel::zero_grad() {
  for (CpuTrainState* s : train_states("zeroGrad()")) s->zero_grad();
}

// ---------------------------------------------------------------------------------------------
// Optimizer

void validate_adamw(const AdamWOptions& hp) {
  ZN_CHECK(std::isfinite(hp.lr) && hp.lr >= 0, "model: learning rate must be >= 0, got ", hp.lr);
  ZN_CHECK(hp.beta1 >= 0 && hp.beta1 < 1, "model: beta1 must be in [0, 1), got ", hp.beta1);
  ZN_CHECK(hp.beta2 >= 0 && hp.beta2 < 1, "model: beta2 must be in [0, 1), got ", hp.beta2);
  ZN_CHECK(hp.eps >= 0, "model: eps must be >= 0, got ", hp.eps);
}

void check_grad_norm(double norm) {
  ZN_CHECK(std::isfinite(norm), "model: the gradient norm is not finite (", norm,
           "); the optimizer step was not taken");
}

// One global norm over every trained group, as torch's clip_grad_norm_ over the trainable
// parameters, then each group's step with the same clipping.
double MistralModel::clip_and_step(const AdamWOptions& hp) {
  profile_ = {};
  StepTimer timer(options_.profile_steps);
  double squares = 0;
  for (const CpuTrainState* s : train_states("an optimizer step")) squares += s->grad_sum_of_squares();
  return step_clipped(hp, squares, timer);
}

double MistralModel::clip_and_step(const AdamWOptions& hp, double grad_sum_of_squares) {
  profile_ = {};
  StepTimer timer(options_.profile_steps);
  return step_clipped(hp, grad_sum_of_squares, timer);
}

double MistralModel::step_clipped(const AdamWOptions& hp, double grad_sum_of_squares, StepTimer& timer) {
  const std::vector<CpuTrainState*> states = train_states("an optimizer step");
  validate_adamw(hp);
  const double norm = std::sqrt(grad_sum_of_squares);
  check_grad_norm(norm);
  timer.lap(&profile_.clip);
  const float scale = cpu::clip_coefficient(norm, hp.max_grad_norm);
  for (CpuTrainState* s : states) s->step(hp, scale);
  timer.lap(&profile_.host_adamw);
  profiled_ = options_.profile_steps;
  return norm;
}

}  // namespace zn::model
