// Mistral forward/backward as a plain sequence of kernel calls (see mistral.h for the math).
// Memory: everything is allocated in the constructor from the plan; a step allocates nothing
// except the kernels' own per-call scratch (the log-prob chunks).
#include "model/mistral.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "core/errors.h"
#include "core/memory.h"
#include "core/thread_pool.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/logprob.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "model/row_gradient.h"
#include "model/safetensors.h"

namespace zn::model {

// ---------------------------------------------------------------------------------------------
// Config and parameter table

void MistralConfig::validate() const {
  auto positive = [](const char* field, long value) {
    ZN_CHECK(value > 0, "model config: ", field, " must be positive, got ", value);
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_layers);
  positive("num_attention_heads", num_heads);
  positive("num_key_value_heads", num_kv_heads);
  positive("head_dim", head_dim);
  ZN_CHECK(num_heads % num_kv_heads == 0, "model config: num_attention_heads (", num_heads,
           ") must be a multiple of num_key_value_heads (", num_kv_heads, ")");
  ZN_CHECK(head_dim % 2 == 0, "model config: head_dim must be even for rotary embeddings, got ",
           head_dim);
  ZN_CHECK(std::isfinite(rms_norm_eps) && rms_norm_eps > 0,
           "model config: rms_norm_eps must be positive, got ", rms_norm_eps);
  ZN_CHECK(std::isfinite(rope_theta) && rope_theta > 0,
           "model config: rope_theta must be positive, got ", rope_theta);
  ZN_CHECK(pad_token_id < vocab_size, "model config: pad_token_id ", pad_token_id,
           " is outside the vocabulary (vocab_size ", vocab_size, ")");
}

std::vector<ParameterSpec> parameter_table(const MistralConfig& c) {
  c.validate();
  std::vector<ParameterSpec> table;
  size_t offset = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape, bool decay) {
    size_t numel = 1;
    for (int64_t s : shape) numel *= size_t(s);
    table.push_back({std::move(name), std::move(shape), offset, numel, decay});
    offset += numel;
  };
  const int64_t d = c.hidden_size, ffn = c.intermediate_size;
  add("model.embed_tokens.weight", {c.vocab_size, d}, true);
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string prefix = "model.layers." + std::to_string(l) + ".";
    add(prefix + "input_layernorm.weight", {d}, false);
    // q, k, v adjacent: one [q_dim + 2 kv_dim, d] block, should a fused QKV GEMM be wanted.
    add(prefix + "self_attn.q_proj.weight", {c.q_dim(), d}, true);
    add(prefix + "self_attn.k_proj.weight", {c.kv_dim(), d}, true);
    add(prefix + "self_attn.v_proj.weight", {c.kv_dim(), d}, true);
    add(prefix + "self_attn.o_proj.weight", {d, c.q_dim()}, true);
    add(prefix + "post_attention_layernorm.weight", {d}, false);
    add(prefix + "mlp.gate_proj.weight", {ffn, d}, true);
    add(prefix + "mlp.up_proj.weight", {ffn, d}, true);
    add(prefix + "mlp.down_proj.weight", {d, ffn}, true);
  }
  add("model.norm.weight", {d}, false);
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, d}, true);
  return table;
}

size_t parameter_count(const std::vector<ParameterSpec>& table) {
  return table.empty() ? 0 : table.back().offset + table.back().numel;
}

size_t norm_slots(const std::vector<ParameterSpec>& table, std::vector<size_t>* slots) {
  size_t used = 0;
  if (slots) slots->assign(table.size(), kNoSlot);
  for (size_t i = 0; i < table.size(); ++i) {
    if (table[i].shape.size() != 1) continue;
    if (slots) (*slots)[i] = used;
    used += table[i].numel;
  }
  return used;
}

const ParameterSpec& find_parameter(const std::vector<ParameterSpec>& table, const std::string& name) {
  for (const ParameterSpec& p : table) {
    if (p.name == name) return p;
  }
  fail("model: no parameter named '", name, "'");
}

ParameterIndex index_parameters(const MistralConfig& config, const std::vector<ParameterSpec>& table) {
  auto find = [&](const std::string& name) { return &find_parameter(table, name); };
  ParameterIndex index;
  for (int l = 0; l < config.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    index.layers.push_back({find(p + "input_layernorm.weight"), find(p + "self_attn.q_proj.weight"),
                            find(p + "self_attn.k_proj.weight"), find(p + "self_attn.v_proj.weight"),
                            find(p + "self_attn.o_proj.weight"), find(p + "post_attention_layernorm.weight"),
                            find(p + "mlp.gate_proj.weight"), find(p + "mlp.up_proj.weight"),
                            find(p + "mlp.down_proj.weight")});
  }
  index.embed = find("model.embed_tokens.weight");
  index.final_norm = find("model.norm.weight");
  index.lm_head = config.tie_word_embeddings ? index.embed : find("lm_head.weight");
  return index;
}

// ---------------------------------------------------------------------------------------------
// Activation plan: one arena, laid out by walking the same table for planning and allocating.
//
// Selective recomputation (as Megatron-LM's): a layer keeps what a GEMM or attention produced
// and recomputes in backward what elementwise work gives back exactly: the rmsnorm outputs
// n1, n2 (from the saved 1/rms) and act = silu(gate) * up. Those values, and the backward's
// scratch, live in buffers shared by all layers. One GEMM output is recomputed too, because it
// needs no buffer of its own: h = x + o_proj(attn) is rebuilt in the next layer's input buffer,
// which is dead by the time the layer's backward runs (one o_proj GEMM more per layer, ~1.7% of
// a step's FLOPs on the small bench preset, for [N, d] less per layer). Recomputed values are
// the forward's bits (the same code on the same inputs), so the gradients are too.
// k and v are recomputed as well (k_proj, v_proj and k's rope from n1: ~1.5% of a step's FLOPs
// on the small preset, where they would hold [N, 2 kv_dim] per layer): all layers write them
// to one shared pair of buffers, which still holds the top layer's when its backward starts.

struct LayerActivations {
  float* rstd1;  // 1 / rms(x), gives n1     [N]
  float* q;      // rope(q_proj(n1))         [N, Hq * D]
  float* k;      // rope(k_proj(n1))         [N, Hkv * D]  (shared by all layers when
  float* v;      // v_proj(n1)               [N, Hkv * D]   Activations::shared_kv)
  float* attn;   // attention output         [N, Hq * D]
  float* lse;    // attention log-sum-exp    [Hq, N]
  float* rstd2;  // 1 / rms(h), gives n2     [N]
  // gate_proj(n2) and up_proj(n2), [N, ffn] each, adjacent. Backward overwrites them with dgate
  // and dup, and once the MLP's backward has read those, with dq, dk, dv (AttentionGrads).
  float* gate;
  float* up;
};

// Where a layer's backward puts the attention's input gradients: in its own gate/up buffers.
struct AttentionGrads {
  float* dq;  // [N, Hq * D]
  float* dk;  // [N, Hkv * D]
  float* dv;  // [N, Hkv * D]
};

struct Activations {
  bool shared_kv = false;  // every layer slot's k and v are one pair, recomputed in backward
  std::vector<float*> residual;          // layer inputs x_0 .. x_L (two, ping-pong, if not trainable)
  std::vector<LayerActivations> layers;  // one per layer, or one slot reused by every layer
  float* final_rstd;                     // 1 / rms(x_L)  [N]
  float* logit_lse;                      // log-sum-exp of the logits  [N]
  // Shared by all layers. `normed` holds the rmsnorm output the next GEMMs read (n1, n2, the
  // final norm, which next_token_logits reads after a forward) and, in backward, rmsnorm's dx.
  float* normed;  // [N, d]
  // act = silu(gate) * up for down_proj. In backward the same buffer holds, one after another,
  // act, dact (down_proj's dx, once its weight gradient has read act), dnorm (d loss / d n2),
  // dattn, dnorm (d loss / d n1): each dead before the next is written. A frozen model writes act
  // over gate, which nothing reads again.
  float* act;  // [N, max(ffn, d, Hq * D)]
  float *dact, *dnorm, *dattn;
  float* dres;  // d loss / d residual stream  [N, d] (trainable only)
  // The one-pass lm_head's logits panel (forward_backward): the top layer's gate/up region, act
  // and dres, laid out back to back. All are dead while the lm_head runs except the top layer's
  // gate and up, which backward then recomputes from n2 (two GEMMs of one layer, against a
  // 32 MiB panel of its own on the small preset).
  float* head_workspace = nullptr;
  size_t head_workspace_floats = 0;
};

namespace {

// Hands out 64-byte aligned pieces of an arena; with a null base it only counts.
class ArenaLayout {
 public:
  explicit ArenaLayout(float* base) : base_(base) {}
  float* take(size_t count) {
    float* p = base_ ? base_ + used_ : nullptr;
    used_ += (count + 15) / 16 * 16;
    return p;
  }
  size_t used() const { return used_; }

 private:
  float* base_;
  size_t used_ = 0;
};

int saved_layer_slots(const MistralConfig& c, const ModelOptions& o) {
  return o.trainable && !o.gradient_checkpointing ? c.num_layers : 1;
}

// Places gate and up from base; returns the floats they span.
size_t place_mlp_inputs(const MistralConfig& c, size_t N, float* base, LayerActivations& s) {
  ArenaLayout part(base);
  s.gate = part.take(N * size_t(c.intermediate_size));
  s.up = part.take(N * size_t(c.intermediate_size));
  return part.used();
}

// Places dq, dk, dv from base (a layer's gate); returns the floats they span.
size_t place_attention_grads(const MistralConfig& c, size_t N, float* base, AttentionGrads& g) {
  ArenaLayout part(base);
  g.dq = part.take(N * size_t(c.q_dim()));
  g.dk = part.take(N * size_t(c.kv_dim()));
  g.dv = part.take(N * size_t(c.kv_dim()));
  return part.used();
}

// Lays out the activations for max_tokens; returns the arena size in floats.
size_t layout_activations(const MistralConfig& c, const ModelOptions& o, float* base,
                          Activations& a) {
  const size_t N = size_t(o.max_tokens), d = size_t(c.hidden_size);
  const size_t qd = size_t(c.q_dim()), kvd = size_t(c.kv_dim()), ffn = size_t(c.intermediate_size);
  ArenaLayout arena(base);
  a.residual.resize(o.trainable ? size_t(c.num_layers) + 1 : 2);
  for (float*& x : a.residual) x = arena.take(N * d);
  a.layers.resize(size_t(saved_layer_slots(c, o)));
  a.shared_kv = a.layers.size() > 1;
  float* const shared_k = a.shared_kv ? arena.take(N * kvd) : nullptr;
  float* const shared_v = a.shared_kv ? arena.take(N * kvd) : nullptr;
  size_t top_mlp_start = 0;  // where the last slot's gate/up region begins
  for (LayerActivations& s : a.layers) {
    s.rstd1 = arena.take(N);
    s.q = arena.take(N * qd);
    s.k = a.shared_kv ? shared_k : arena.take(N * kvd);
    s.v = a.shared_kv ? shared_v : arena.take(N * kvd);
    s.attn = arena.take(N * qd);
    s.lse = arena.take(size_t(c.num_heads) * N);
    s.rstd2 = arena.take(N);
    AttentionGrads g;
    const size_t mlp = std::max(place_mlp_inputs(c, N, nullptr, s), place_attention_grads(c, N, nullptr, g));
    top_mlp_start = arena.used();
    place_mlp_inputs(c, N, arena.take(mlp), s);
  }
  if (o.trainable) {
    a.act = a.dact = a.dnorm = a.dattn = arena.take(N * std::max({ffn, d, qd}));
    a.dres = arena.take(N * d);
    a.head_workspace = a.layers.back().gate;
    a.head_workspace_floats = arena.used() - top_mlp_start;
  }
  a.final_rstd = arena.take(N);
  a.logit_lse = arena.take(N);
  a.normed = arena.take(N * d);
  if (!o.trainable) a.act = a.layers[0].gate;
  return arena.used();
}

}  // namespace

MemoryPlan plan_memory(const MistralConfig& c, const ModelOptions& o) {
  c.validate();
  ZN_CHECK(o.max_tokens > 0, "model: maxTokens must be positive, got ", o.max_tokens);
  const std::vector<ParameterSpec> table = parameter_table(c);
  const size_t params = parameter_count(table);
  MemoryPlan plan;
  plan.weights = frozen_bf16(o) ? params * 2 + norm_slots(table, nullptr) * 4
                                : params * 4 + (o.precision == Precision::BF16 ? params * 2 : 0);
  // An untied embedding's gradient is held by rows (model/row_gradient.h), with slots for one
  // micro-batch's tokens; gradient accumulation over new tokens adds rows beyond the plan.
  const size_t embed = size_t(c.vocab_size) * size_t(c.hidden_size);
  plan.grads = !o.trainable ? 0
               : c.tie_word_embeddings ? params * 4
                                       : (params - embed) * 4 + RowGradient::planned_bytes(c.vocab_size, c.hidden_size, o.max_tokens);
  plan.optimizer = o.trainable ? params * 8 : 0;
  Activations counting;
  plan.activations = layout_activations(c, o, nullptr, counting) * 4;
  const cpu::LogprobShape head{o.max_tokens, c.hidden_size, c.vocab_size};
  // The one-pass lm_head's panel lives in the activations (Activations::head_workspace) when
  // 16 rows fit there; else it allocates its own.
  size_t fused = cpu::logprob_fused_scratch_bytes(head);
  if (counting.head_workspace_floats >= cpu::logprob_fused_workspace_floats(head, 16))
    fused = size_t(o.max_tokens) * sizeof(long);  // the labelled-token list
  plan.logits_chunks = o.trainable ? std::max(cpu::logprob_scratch_bytes(head, true), fused)
                                   : cpu::logprob_scratch_bytes(head, false);
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
// Small helpers: linear layers over the GEMM, elementwise copies and adds.

namespace {

// y[N, out] = x[N, in] · Wᵀ + beta y, W [out, in] as stored by HF.
void linear_forward(long N, long in, long out, const float* x, const void* w, DType wdt,
                    float beta, float* y) {
  cpu::gemm(false, true, N, out, in, 1.0f, {x, DType::F32, in}, {w, wdt, in}, beta, y, out);
}

// dW[out, in] += dyᵀ · x (f32); dx[N, in] = dy · W + dx_beta dx (skipped when dx is null).
// dW first: dx may then overwrite x (down_proj's dact takes act's buffer).
void linear_backward(long N, long in, long out, const float* x, const float* dy, const void* w,
                     DType wdt, float* dx, float dx_beta, float* dw) {
  cpu::gemm(true, false, out, in, N, 1.0f, {dy, DType::F32, out}, {x, DType::F32, in}, 1.0f, dw, in);
  if (dx) cpu::gemm(false, false, N, in, out, 1.0f, {dy, DType::F32, out}, {w, wdt, in}, dx_beta, dx, in);
}

void copy(size_t n, const float* from, float* to) {
  parallel_for(n, 1 << 14, [&](size_t b, size_t e) { std::memcpy(to + b, from + b, (e - b) * 4); });
}

void add_into(size_t n, const float* from, float* to) {
  parallel_for(n, 1 << 14, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) to[i] += from[i];
  });
}

void to_bf16(size_t n, const float* from, bf16* to) {
  parallel_for(n, 1 << 14, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) to[i] = f32_to_bf16(from[i]);
  });
}

}  // namespace

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
  params_ = parameter_table(config_);
  const ParameterIndex index = index_parameters(config_, params_);
  layers_ = index.layers;
  embed_ = index.embed;
  final_norm_ = index.final_norm;
  lm_head_ = index.lm_head;

  const size_t n = parameter_count(params_);
  const size_t norm_count = norm_slots(params_, &norm_slots_);
  if (frozen_bf16(options_)) {
    norms_.assign(norm_count, 0.0f);
  } else {
    master_.assign(n, 0.0f);
  }
  if (options_.precision == Precision::BF16) weights_bf16_.assign(n, bf16{0});
  if (options_.trainable) {
    // The embedding is the table's first parameter, so the dense gradients of the others keep
    // their offsets less its size when it has a RowGradient instead.
    ZN_CHECK(embed_->offset == 0, "model: the embedding must be the first parameter");
    if (!config_.tie_word_embeddings) {
      embed_grad_ = std::make_unique<RowGradient>(config_.vocab_size, config_.hidden_size, options_.max_tokens);
      embed_slots_.resize(size_t(options_.max_tokens));
    }
    grads_.assign(n - (embed_grad_ ? embed_->numel : 0), 0.0f);
    adam_m_.assign(n, 0.0f);
    adam_v_.assign(n, 0.0f);
  }
  acts_ = std::make_unique<Activations>();
  arena_.reset(static_cast<float*>(std::calloc(plan_.activations / 4, sizeof(float))));
  ZN_CHECK(arena_ || plan_.activations == 0, "model: cannot allocate ", plan_.activations,
           " bytes of activations");
  layout_activations(config_, options_, arena_.get(), *acts_);
  const size_t N = size_t(options_.max_tokens);
  input_ids_.resize(N);
  position_ids_.resize(N);
  targets_.resize(N);
  cu_seqlens_.resize(N + 1);
}

MistralModel::~MistralModel() = default;

void MistralModel::FreeDeleter::operator()(float* p) const { std::free(p); }

const ParameterSpec& MistralModel::parameter(const std::string& name) const {
  return find_parameter(params_, name);
}

size_t MistralModel::dense_grad_offset(const ParameterSpec& p) const {
  return p.offset - (embed_grad_ ? embed_->numel : 0);
}

bool MistralModel::has_row_gradient(const ParameterSpec& p) const {
  return embed_grad_ && p.offset == embed_->offset;
}

MemoryPlan MistralModel::plan(const MistralConfig& config, const ModelOptions& options) {
  return plan_memory(config, options);
}

const float* MistralModel::master(const ParameterSpec& p) const {
  ZN_CHECK(!master_.empty(), "model: a frozen bf16 model keeps no f32 master (read_master widens its weights)");
  return master_.data() + p.offset;
}

// The f32 values, or a frozen bf16 model's bf16 weights widened.
void MistralModel::read_master(const ParameterSpec& p, float* out) const {
  if (const float* values = f32_values(p)) {
    std::memcpy(out, values, p.numel * sizeof(float));
    return;
  }
  const bf16* values = weights_bf16_.data() + p.offset;
  for (size_t i = 0; i < p.numel; ++i) out[i] = bf16_to_f32(values[i]);
}

void MistralModel::read_gradient(const ParameterSpec& p, float* out) const {
  ZN_CHECK(options_.trainable, "model: gradients exist only for a trainable model");
  if (has_row_gradient(p)) return embed_grad_->dense_rows(0, config_.vocab_size, out);
  std::memcpy(out, grads_.data() + dense_grad_offset(p), p.numel * sizeof(float));
}

float* MistralModel::grad(const ParameterSpec& p) {
  ZN_CHECK(!has_row_gradient(p), "model: the embedding's gradient is held by rows");
  return grads_.data() + dense_grad_offset(p);
}

DType MistralModel::weight_dtype() const {
  return options_.precision == Precision::BF16 ? DType::BF16 : DType::F32;
}

// Matmul operand: the bf16 copy in bf16 mode, else the f32 master.
const void* MistralModel::weight(const ParameterSpec& p) const {
  if (options_.precision == Precision::BF16) return weights_bf16_.data() + p.offset;
  return master_.data() + p.offset;
}

const float* MistralModel::f32_values(const ParameterSpec& p) const {
  if (!master_.empty()) return master_.data() + p.offset;
  return norm_slot(p) == kNoSlot ? nullptr : norms_.data() + norm_slot(p);
}

void MistralModel::refresh_bf16() {
  if (options_.precision == Precision::BF16 && !master_.empty())
    to_bf16(master_.size(), master_.data(), weights_bf16_.data());
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

void WeightFiles::read(const ParameterSpec& p, float* out) {
  auto it = where_.find(p.name);
  ZN_CHECK(it != where_.end(), "model: parameter '", p.name, "' is missing from the weight files (",
           files_.front(), files_.size() > 1 ? ", ..." : "", ")");
  it->second->read(p.name, p.shape, DType::F32, out);
  where_.erase(it);
}

std::vector<std::string> WeightFiles::unread() const {
  std::vector<std::string> names;
  for (const auto& [name, file] : where_) names.push_back(name);
  return names;
}

std::vector<std::string> MistralModel::load_weights(const std::vector<std::string>& files) {
  WeightFiles weights(files);
  std::vector<float> staging;
  for (const ParameterSpec& p : params_) {
    if (!master_.empty()) {
      weights.read(p, master_.data() + p.offset);
      continue;
    }
    // Frozen bf16: only the rounding is kept (and the norm weights in f32).
    staging.resize(p.numel);
    weights.read(p, staging.data());
    to_bf16(p.numel, staging.data(), weights_bf16_.data() + p.offset);
    if (norm_slot(p) != kNoSlot) std::memcpy(norms_.data() + norm_slot(p), staging.data(), p.numel * sizeof(float));
  }
  refresh_bf16();
  have_activations_ = false;
  return weights.unread();
}

void MistralModel::save_weights(const std::string& path, const std::vector<std::string>& names,
                                SaveDType dtype, const std::map<std::string, std::string>& metadata) const {
  const StDType stored = dtype == SaveDType::F32 ? StDType::F32
                         : dtype == SaveDType::F16 ? StDType::F16 : StDType::BF16;
  std::vector<StTensorToWrite> tensors;
  for (const std::string& name : names) {
    const ParameterSpec& p = parameter(name);
    if (const float* values = f32_values(p)) {
      tensors.push_back({p.name, stored, p.shape, values, StDType::F32});
    } else {
      tensors.push_back({p.name, stored, p.shape, weights_bf16_.data() + p.offset, StDType::BF16});
    }
  }
  write_safetensors(path, tensors, metadata);
}

void MistralModel::save_optimizer_state(const std::string& path) const {
  ZN_CHECK(options_.trainable, "model: a frozen model has no optimizer state");
  write_optimizer_state(path, params_, adam_m_.data(), adam_v_.data(), step_);
}

void MistralModel::load_optimizer_state(const std::string& path) {
  ZN_CHECK(options_.trainable, "model: a frozen model has no optimizer state");
  SafetensorsFile file(path);
  const long step = optimizer_state_step(file);
  for (const ParameterSpec& p : params_) {
    read_optimizer_moment(file, Moment::First, p, adam_m_.data() + p.offset);
    read_optimizer_moment(file, Moment::Second, p, adam_v_.data() + p.offset);
  }
  step_ = step;
}

static std::string optimizer_tensor_name(Moment moment, const ParameterSpec& p) {
  return (moment == Moment::First ? "exp_avg." : "exp_avg_sq.") + p.name;
}

void write_optimizer_state(const std::string& path, const std::vector<ParameterSpec>& params,
                           const float* exp_avg, const float* exp_avg_sq, long step) {
  std::vector<StTensorToWrite> tensors;
  for (const ParameterSpec& p : params) {
    tensors.push_back({optimizer_tensor_name(Moment::First, p), StDType::F32, p.shape, exp_avg + p.offset});
    tensors.push_back({optimizer_tensor_name(Moment::Second, p), StDType::F32, p.shape, exp_avg_sq + p.offset});
  }
  write_safetensors(path, tensors, {{"format", "zephyr-native-adamw"}, {"step", std::to_string(step)}});
}

long optimizer_state_step(const SafetensorsFile& file) {
  auto step = file.metadata().find("step");
  ZN_CHECK(step != file.metadata().end(), file.path(), ": not an optimizer state file (no 'step' in its metadata)");
  char* end = nullptr;
  const long parsed = std::strtol(step->second.c_str(), &end, 10);
  ZN_CHECK(end && *end == 0 && parsed >= 0, file.path(), ": bad optimizer step '", step->second, "'");
  return parsed;
}

void read_optimizer_moment(const SafetensorsFile& file, Moment moment, const ParameterSpec& p, float* out) {
  const std::string name = optimizer_tensor_name(moment, p);
  ZN_CHECK(file.find(name), file.path(), ": optimizer state lacks '", name, "'");
  file.read(name, p.shape, DType::F32, out);
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

void MistralModel::layer_forward(int l, const float* x, float* out, LayerActivations& a,
                                 bool need_output) {
  const MistralConfig& c = config_;
  const LayerParameters& p = layers_[size_t(l)];
  Activations& A = *acts_;
  const long N = tokens_, d = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim();
  const long ffn = c.intermediate_size;
  const DType wdt = weight_dtype();

  cpu::rmsnorm_forward(N, d, c.rms_norm_eps, x, norm_weight(*p.input_norm), A.normed, a.rstd1);
  linear_forward(N, d, qd, A.normed, weight(*p.q), wdt, 0.0f, a.q);
  linear_forward(N, d, kvd, A.normed, weight(*p.k), wdt, 0.0f, a.k);
  linear_forward(N, d, kvd, A.normed, weight(*p.v), wdt, 0.0f, a.v);
  cpu::rope_forward(N, c.num_heads, c.head_dim, c.rope_theta, position_ids_.data(), a.q);
  cpu::rope_forward(N, c.num_kv_heads, c.head_dim, c.rope_theta, position_ids_.data(), a.k);
  const cpu::AttentionShape shape{N, c.num_heads, c.num_kv_heads, c.head_dim, c.sliding_window,
                                  1.0f / std::sqrt(float(c.head_dim))};
  cpu::attention_forward(shape, a.q, a.k, a.v, cu_seqlens_.data(), n_docs_, a.attn, a.lse);
  float* h = out;  // the MLP adds its output to h in place
  attention_residual(l, x, a.attn, h);

  cpu::rmsnorm_forward(N, d, c.rms_norm_eps, h, norm_weight(*p.post_norm), A.normed, a.rstd2);
  linear_forward(N, d, ffn, A.normed, weight(*p.gate), wdt, 0.0f, a.gate);
  linear_forward(N, d, ffn, A.normed, weight(*p.up), wdt, 0.0f, a.up);
  if (!need_output) return;  // recomputation for backward: out keeps h, backward recomputes act
  cpu::swiglu_forward(N * ffn, a.gate, a.up, A.act);
  linear_forward(N, ffn, d, A.act, weight(*p.down), wdt, 1.0f, out);
}

// Layer l's k and v into the shared pair, as layer_forward computed them (n1 from the saved
// 1/rms, the same GEMMs and rope), so the bits are the forward's.
void MistralModel::recompute_kv(int l, const float* x) {
  const MistralConfig& c = config_;
  const LayerParameters& p = layers_[size_t(l)];
  Activations& A = *acts_;
  const LayerActivations& a = A.layers[size_t(l)];
  const long N = tokens_, d = c.hidden_size, kvd = c.kv_dim();
  cpu::rmsnorm_apply(N, d, x, norm_weight(*p.input_norm), a.rstd1, A.normed);
  linear_forward(N, d, kvd, A.normed, weight(*p.k), weight_dtype(), 0.0f, a.k);
  linear_forward(N, d, kvd, A.normed, weight(*p.v), weight_dtype(), 0.0f, a.v);
  cpu::rope_forward(N, c.num_kv_heads, c.head_dim, c.rope_theta, position_ids_.data(), a.k);
}

// The top layer's gate and up, as layer_forward computed them (n2 from the saved 1/rms), after
// the one-pass lm_head has used their region as its panel.
void MistralModel::recompute_mlp_inputs(int l, const float* h) {
  const MistralConfig& c = config_;
  const LayerParameters& p = layers_[size_t(l)];
  Activations& A = *acts_;
  const LayerActivations& a = A.layers.back();
  const long N = tokens_, d = c.hidden_size, ffn = c.intermediate_size;
  cpu::rmsnorm_apply(N, d, h, norm_weight(*p.post_norm), a.rstd2, A.normed);
  linear_forward(N, d, ffn, A.normed, weight(*p.gate), weight_dtype(), 0.0f, a.gate);
  linear_forward(N, d, ffn, A.normed, weight(*p.up), weight_dtype(), 0.0f, a.up);
}

void MistralModel::attention_residual(int l, const float* x, const float* attn, float* h) {
  const MistralConfig& c = config_;
  const long N = tokens_, d = c.hidden_size;
  copy(size_t(N * d), x, h);
  linear_forward(N, c.q_dim(), d, attn, weight(*layers_[size_t(l)].o), weight_dtype(), 1.0f, h);
}

// Embedding, the decoder layers and the final norm: acts_->normed holds the lm_head's input.
void MistralModel::run_trunk(bool keep) {
  const MistralConfig& c = config_;
  Activations& A = *acts_;
  const long N = tokens_, d = c.hidden_size;
  // Without keeping, two residual buffers alternate and one layer slot serves every layer.
  auto residual = [&](int l) { return A.residual[keep ? size_t(l) : size_t(l % 2)]; };
  auto slot = [&](int l) -> LayerActivations& { return A.layers[keep && A.layers.size() > 1 ? size_t(l) : 0]; };

  cpu::embedding_forward(N, d, c.vocab_size, input_ids_.data(), weight(*embed_), weight_dtype(),
                         residual(0));
  for (int l = 0; l < c.num_layers; ++l) layer_forward(l, residual(l), residual(l + 1), slot(l), true);
  cpu::rmsnorm_forward(N, d, c.rms_norm_eps, residual(c.num_layers), norm_weight(*final_norm_), A.normed,
                       A.final_rstd);
}

void MistralModel::run_forward(float* logp, bool keep) {
  run_trunk(keep);
  const cpu::LogprobShape shape{tokens_, config_.hidden_size, config_.vocab_size};
  cpu::logprob_forward(shape, acts_->normed, weight(*lm_head_), weight_dtype(), targets_.data(), logp,
                       acts_->logit_lse);
}

void MistralModel::forward(const TokenBatchView& batch, float* logp) {
  ZN_CHECK(options_.trainable, "model: forward() keeps activations for backward, but this model "
           "was created with trainable: false; use logprobs()");
  have_activations_ = false;
  copy_batch(batch);
  run_forward(logp, true);
  have_activations_ = true;
}

void MistralModel::logprobs(const TokenBatchView& batch, float* logp) {
  have_activations_ = false;  // the shared slots are overwritten
  copy_batch(batch);
  run_forward(logp, false);
}

void MistralModel::next_token_logits(const TokenBatchView& batch, float* logits) {
  have_activations_ = false;
  copy_batch(batch);
  std::vector<float> logp(static_cast<size_t>(tokens_));
  run_forward(logp.data(), false);
  const long d = config_.hidden_size;
  std::vector<float> last_rows(size_t(n_docs_) * size_t(d));
  for (int doc = 0; doc < n_docs_; ++doc) {
    const long row = cu_seqlens_[size_t(doc) + 1] - 1;
    ZN_CHECK(row >= cu_seqlens_[size_t(doc)], "model: next_token_logits: document ", doc, " is empty");
    std::copy_n(acts_->normed + row * d, d, last_rows.data() + size_t(doc) * size_t(d));
  }
  cpu::gemm(false, true, n_docs_, config_.vocab_size, d, 1.0f, {last_rows.data(), DType::F32, d},
            {weight(*lm_head_), weight_dtype(), d}, 0.0f, logits, config_.vocab_size);
}

// ---------------------------------------------------------------------------------------------
// Backward

// On entry dres = d loss / d (layer output); on exit d loss / d (layer input x).
void MistralModel::layer_backward(int l, const float* x, const float* h, float* dres) {
  const MistralConfig& c = config_;
  const LayerParameters& p = layers_[size_t(l)];
  Activations& A = *acts_;
  LayerActivations& a = A.layers[A.layers.size() > 1 ? size_t(l) : 0];
  const long N = tokens_, d = c.hidden_size, qd = c.q_dim(), kvd = c.kv_dim();
  const long ffn = c.intermediate_size;
  const DType wdt = weight_dtype();

  // MLP: out = h + down(silu(gate(n2)) * up(n2)); act and n2 recomputed, dgate and dup over
  // gate and up, rmsnorm's dx over n2 once the GEMMs have read it.
  cpu::swiglu_forward(N * ffn, a.gate, a.up, A.act);
  linear_backward(N, ffn, d, A.act, dres, weight(*p.down), wdt, A.dact, 0.0f, grad(*p.down));
  cpu::swiglu_backward(N * ffn, a.gate, a.up, A.dact, a.gate, a.up);
  cpu::rmsnorm_apply(N, d, h, norm_weight(*p.post_norm), a.rstd2, A.normed);
  linear_backward(N, d, ffn, A.normed, a.gate, weight(*p.gate), wdt, A.dnorm, 0.0f, grad(*p.gate));
  linear_backward(N, d, ffn, A.normed, a.up, weight(*p.up), wdt, A.dnorm, 1.0f, grad(*p.up));
  cpu::rmsnorm_backward(N, d, h, norm_weight(*p.post_norm), a.rstd2, A.dnorm, A.normed, grad(*p.post_norm));
  add_into(size_t(N * d), A.normed, dres);  // now d loss / d h

  // Attention: h = x + o(attention(rope(q(n1)), rope(k(n1)), v(n1))); n1 recomputed likewise.
  linear_backward(N, qd, d, a.attn, dres, weight(*p.o), wdt, A.dattn, 0.0f, grad(*p.o));
  const cpu::AttentionShape shape{N, c.num_heads, c.num_kv_heads, c.head_dim, c.sliding_window,
                                  1.0f / std::sqrt(float(c.head_dim))};
  AttentionGrads g;
  place_attention_grads(c, size_t(options_.max_tokens), a.gate, g);
  cpu::attention_backward(shape, a.q, a.k, a.v, cu_seqlens_.data(), n_docs_, a.attn, a.lse, A.dattn,
                          g.dq, g.dk, g.dv);
  cpu::rope_backward(N, c.num_heads, c.head_dim, c.rope_theta, position_ids_.data(), g.dq);
  cpu::rope_backward(N, c.num_kv_heads, c.head_dim, c.rope_theta, position_ids_.data(), g.dk);
  cpu::rmsnorm_apply(N, d, x, norm_weight(*p.input_norm), a.rstd1, A.normed);
  linear_backward(N, d, qd, A.normed, g.dq, weight(*p.q), wdt, A.dnorm, 0.0f, grad(*p.q));
  linear_backward(N, d, kvd, A.normed, g.dk, weight(*p.k), wdt, A.dnorm, 1.0f, grad(*p.k));
  linear_backward(N, d, kvd, A.normed, g.dv, weight(*p.v), wdt, A.dnorm, 1.0f, grad(*p.v));
  cpu::rmsnorm_backward(N, d, x, norm_weight(*p.input_norm), a.rstd1, A.dnorm, A.normed, grad(*p.input_norm));
  add_into(size_t(N * d), A.normed, dres);  // now d loss / d x
}

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
  const MistralConfig& c = config_;
  Activations& A = *acts_;
  cpu::rmsnorm_apply(tokens_, c.hidden_size, A.residual[size_t(c.num_layers)], norm_weight(*final_norm_),
                     A.final_rstd, A.normed);
  const cpu::LogprobShape shape{tokens_, c.hidden_size, c.vocab_size};
  cpu::logprob_backward(shape, A.normed, weight(*lm_head_), weight_dtype(), targets_.data(),
                        A.logit_lse, dlogp, A.dnorm, grad(*lm_head_));
  backward_trunk(A.dnorm, /*top_mlp_overwritten=*/false);
}

void MistralModel::forward_backward(const TokenBatchView& batch, const float* dlogp, float* logp) {
  ZN_CHECK(options_.trainable, "model: forwardBackward() on a model created with trainable: false");
  have_activations_ = false;
  copy_batch(batch);
  validate_dlogp(dlogp, tokens_);
  run_trunk(true);
  const MistralConfig& c = config_;
  const cpu::LogprobShape shape{tokens_, c.hidden_size, c.vocab_size};
  Activations& A = *acts_;
  // dhidden is written over the lm_head's input, as the panel takes act and dres.
  cpu::logprob_forward_backward(shape, A.normed, weight(*lm_head_), weight_dtype(), targets_.data(),
                                dlogp, logp, A.normed, grad(*lm_head_),
                                {A.head_workspace, A.head_workspace_floats});
  backward_trunk(A.normed, /*top_mlp_overwritten=*/true);
}

void MistralModel::backward_trunk(const float* dnormed, bool top_mlp_overwritten) {
  const MistralConfig& c = config_;
  Activations& A = *acts_;
  const long N = tokens_, d = c.hidden_size;
  const float* last = A.residual[size_t(c.num_layers)];
  cpu::rmsnorm_backward(N, d, last, norm_weight(*final_norm_), A.final_rstd, dnormed, A.dres,
                        grad(*final_norm_));
  for (int l = c.num_layers - 1; l >= 0; --l) {
    const float* x = A.residual[size_t(l)];
    // The layer's output x_{l+1} is dead now that the layer above (or the final norm) has done
    // its backward: h takes its buffer.
    float* h = A.residual[size_t(l) + 1];
    // With checkpointing the one slot still holds the last layer's activations from forward.
    if (options_.gradient_checkpointing && l != c.num_layers - 1) {
      layer_forward(l, x, h, A.layers[0], false);
    } else {
      if (A.shared_kv && l != c.num_layers - 1) recompute_kv(l, x);
      attention_residual(l, x, A.layers[A.layers.size() > 1 ? size_t(l) : 0].attn, h);
      if (top_mlp_overwritten && l == c.num_layers - 1) recompute_mlp_inputs(l, h);
    }
    layer_backward(l, x, h, A.dres);
  }
  if (embed_grad_) {
    // The lookup's scatter-add into the rows' slots: the same kernel over a table of slots.
    embed_grad_->assign(input_ids_.data(), N, embed_slots_.data());
    const long pad_slot = c.pad_token_id >= 0 ? embed_grad_->slot_of(c.pad_token_id) : -1;
    cpu::embedding_backward(N, d, embed_grad_->slots(), embed_slots_.data(), A.dres, pad_slot,
                            embed_grad_->values());
  } else {
    cpu::embedding_backward(N, d, c.vocab_size, input_ids_.data(), A.dres, c.pad_token_id,
                            grad(*embed_));
  }
}

void MistralModel::zero_grad() {
  ZN_CHECK(options_.trainable, "model: zeroGrad() on a model created with trainable: false");
  std::memset(grads_.data(), 0, grads_.size() * 4);
  if (embed_grad_) embed_grad_->clear();
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

double MistralModel::clip_and_step(const AdamWOptions& hp) {
  ZN_CHECK(options_.trainable, "model: an optimizer step on a model created with trainable: false");
  validate_adamw(hp);
  const double squares = cpu::sum_of_squares(long(grads_.size()), grads_.data());
  const double norm = std::sqrt(squares + (embed_grad_ ? embed_grad_->sum_of_squares() : 0.0));
  check_grad_norm(norm);
  const float scale = cpu::clip_coefficient(norm, hp.max_grad_norm);
  ++step_;
  const bool bf16_copy = options_.precision == Precision::BF16;
  for (const ParameterSpec& p : params_) {
    const cpu::AdamWStep s{hp.lr, hp.beta1, hp.beta2, hp.eps, p.decay ? hp.weight_decay : 0.0,
                           step_, scale};
    auto update = [&](size_t offset, size_t count, const float* g) {
      cpu::adamw_update(long(count), s, master_.data() + offset, g, adam_m_.data() + offset,
                        adam_v_.data() + offset, bf16_copy ? weights_bf16_.data() + offset : nullptr);
    };
    if (!has_row_gradient(p)) {
      update(p.offset, p.numel, grads_.data() + dense_grad_offset(p));
      continue;
    }
    // Rows without a slot step with a zero gradient, as a dense one would have them: blocks of
    // rows are written out dense (256 KiB at a time) for the same AdamW kernel.
    const long d = config_.hidden_size, block = std::max(1L, 65536 / d);
    std::vector<float> dense(size_t(block * d));
    for (long r0 = 0; r0 < config_.vocab_size; r0 += block) {
      const long rows = std::min(block, config_.vocab_size - r0);
      embed_grad_->dense_rows(r0, rows, dense.data());
      update(p.offset + size_t(r0 * d), size_t(rows * d), dense.data());
    }
  }
  return norm;
}

}  // namespace zn::model
