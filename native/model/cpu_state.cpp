// CpuWeights and CpuTrainState (cpu_state.h).
#include "model/cpu_state.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/errors.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/embedding.h"
#include "model/mistral.h"
#include "model/row_gradient.h"
#include "model/safetensors.h"

namespace zn::model {

// ---------------------------------------------------------------------------------------------
// Weights

size_t CpuWeights::bytes(const std::vector<ParameterSpec>& table, Precision precision) {
  const size_t params = parameter_count(table);
  return precision == Precision::BF16 ? params * sizeof(bf16) + norm_slots(table, nullptr) * sizeof(float)
                                      : params * sizeof(float);
}

CpuWeights::CpuWeights(const std::vector<ParameterSpec>& table, Precision precision) : table_(table) {
  const size_t n = parameter_count(table);
  if (precision == Precision::BF16) {
    bf16_.assign(n, bf16{0});
    norms_.assign(norm_slots(table, &norm_slots_), 0.0f);
  } else {
    f32_.assign(n, 0.0f);
  }
}

// Matmul operand: the bf16 rounding in bf16 mode, else the f32 values.
ConstTensor CpuWeights::weight(const ParameterSpec& p) const {
  if (is_bf16()) return {bf16_.data() + p.offset, DType::BF16};
  return {f32_.data() + p.offset, DType::F32};
}

const float* CpuWeights::norm_weight(const ParameterSpec& p) const {
  const float* values = f32_values(p);
  ZN_CHECK(values, "model: '", p.name, "' is not a norm weight");
  return values;
}

const float* CpuWeights::f32_values(const ParameterSpec& p) const {
  if (!is_bf16()) return f32_.data() + p.offset;
  return norm_slot(p) == kNoSlot ? nullptr : norms_.data() + norm_slot(p);
}

void CpuWeights::assign(const ParameterSpec& p, const float* values) {
  if (!is_bf16()) {
    std::memcpy(f32_.data() + p.offset, values, p.numel * sizeof(float));
    return;
  }
  round_to_bf16(p.numel, values, bf16_.data() + p.offset);
  if (norm_slot(p) != kNoSlot) std::memcpy(norms_.data() + norm_slot(p), values, p.numel * sizeof(float));
}

void CpuWeights::read(const ParameterSpec& p, float* out) const {
  if (const float* values = f32_values(p)) {
    std::memcpy(out, values, p.numel * sizeof(float));
    return;
  }
  const bf16* values = bf16_values(p);
  for (size_t i = 0; i < p.numel; ++i) out[i] = bf16_to_f32(values[i]);
}

// ---------------------------------------------------------------------------------------------
// Train state

CpuTrainState::CpuTrainState(const MistralConfig& config, const ParameterGroup& group, const ParameterIndex& index,
                             long max_tokens, CpuWeights& weights, bool dense_embedding)
    : config_(config), group_(group), index_(index), weights_(weights) {
  const size_t n = group.numel();
  // The embedding is the table's first parameter, so when the group trains it, it is the group's
  // first member too, and the dense gradients of the others keep their group offsets less its
  // size when it has a RowGradient instead.
  ZN_CHECK(index.embed->offset == 0, "model: the embedding must be the first parameter");
  if (!config.tie_word_embeddings && !dense_embedding && group.contains(*index.embed)) {
    embed_grad_ = std::make_unique<RowGradient>(config.vocab_size, config.hidden_size, max_tokens);
    embed_slots_.resize(size_t(max_tokens));
  }
  if (weights.is_bf16()) master_.assign(n, 0.0f);
  grads_.assign(n - (embed_grad_ ? index.embed->numel : 0), 0.0f);
  adam_m_.assign(n, 0.0f);
  adam_v_.assign(n, 0.0f);
}

CpuTrainState::~CpuTrainState() = default;

size_t CpuTrainState::dense_grad_offset(const ParameterSpec& p) const {
  return group_.offset(p) - (embed_grad_ ? index_.embed->numel : 0);
}

bool CpuTrainState::has_row_gradient(const ParameterSpec& p) const {
  return embed_grad_ && &p == index_.embed;
}

float* CpuTrainState::grad(const ParameterSpec& p) {
  if (!group_.contains(p)) return nullptr;
  ZN_CHECK(!has_row_gradient(p), "model: the embedding's gradient is held by rows");
  return grads_.data() + dense_grad_offset(p);
}

void CpuTrainState::embedding_backward(long tokens, const int32_t* ids, const float* dres) {
  const MistralConfig& c = config_;
  if (!group_.contains(*index_.embed)) return;
  if (!embed_grad_) {
    cpu::embedding_backward(tokens, c.hidden_size, c.vocab_size, ids, dres, c.pad_token_id, grad(*index_.embed));
    return;
  }
  // The lookup's scatter-add into the rows' slots: the same kernel over a table of slots.
  embed_grad_->assign(ids, tokens, embed_slots_.data());
  const long pad_slot = c.pad_token_id >= 0 ? embed_grad_->slot_of(c.pad_token_id) : -1;
  cpu::embedding_backward(tokens, c.hidden_size, embed_grad_->slots(), embed_slots_.data(), dres, pad_slot,
                          embed_grad_->values());
}

void CpuTrainState::read_gradient(const ParameterSpec& p, float* out) const {
  group_.offset(p);  // throws naming a frozen parameter
  if (has_row_gradient(p)) return embed_grad_->dense_rows(0, config_.vocab_size, out);
  std::memcpy(out, grads_.data() + dense_grad_offset(p), p.numel * sizeof(float));
}

std::pair<float*, size_t> CpuTrainState::dense_gradients() {
  ZN_CHECK(!embed_grad_, "model: the embedding's gradient is held by rows; create the model with a dense embedding gradient "
           "(denseEmbeddingGradient) to sum whole gradient buffers across ranks");
  return {grads_.data(), grads_.size()};
}

void CpuTrainState::zero_grad() {
  std::memset(grads_.data(), 0, grads_.size() * sizeof(float));
  if (embed_grad_) embed_grad_->clear();
}

float* CpuTrainState::master(const ParameterSpec& p) {
  if (master_.empty()) {
    group_.offset(p);  // throws naming a frozen parameter
    return weights_.f32_data() + p.offset;
  }
  return master_.data() + group_.offset(p);
}

const float* CpuTrainState::master(const ParameterSpec& p) const {
  return const_cast<CpuTrainState*>(this)->master(p);
}

void CpuTrainState::publish() {
  if (master_.empty()) return;  // f32 mode: the master is the weights
  for (const ParameterSpec* p : group_.members()) weights_.assign(*p, master(*p));
}

double CpuTrainState::grad_sum_of_squares() const {
  const double squares = cpu::sum_of_squares(long(grads_.size()), grads_.data());
  return squares + (embed_grad_ ? embed_grad_->sum_of_squares() : 0.0);
}

void CpuTrainState::step(const AdamWOptions& hp, float clip_scale) {
  ++step_;
  for (const ParameterSpec* p : group_.members()) step_parameter(*p, hp, clip_scale);
}

// AdamW writes the bf16 rounding of what it updates, so the weights' matrices are current when
// it returns; only the f32 norm weights are copied after.
void CpuTrainState::step_parameter(const ParameterSpec& p, const AdamWOptions& hp, float clip_scale) {
  const cpu::AdamWStep s{hp.lr, hp.beta1, hp.beta2, hp.eps, p.decay ? hp.weight_decay : 0.0, step_, clip_scale};
  bf16* const rounded = weights_.is_bf16() ? weights_.bf16_data() + p.offset : nullptr;
  const size_t at = group_.offset(p);
  auto update = [&](size_t begin, size_t count, const float* g) {
    cpu::adamw_update(long(count), s, master(p) + begin, g, adam_m_.data() + at + begin, adam_v_.data() + at + begin,
                      rounded ? rounded + begin : nullptr);
  };
  if (!has_row_gradient(p)) {
    update(0, p.numel, grads_.data() + dense_grad_offset(p));
  } else {
    // Rows without a slot step with a zero gradient, as a dense one would have them: blocks of
    // rows are written out dense (256 KiB at a time) for the same AdamW kernel.
    const long d = config_.hidden_size, block = std::max(1L, 65536 / d);
    std::vector<float> dense(size_t(block * d));
    for (long r0 = 0; r0 < config_.vocab_size; r0 += block) {
      const long rows = std::min(block, config_.vocab_size - r0);
      embed_grad_->dense_rows(r0, rows, dense.data());
      update(size_t(r0 * d), size_t(rows * d), dense.data());
    }
  }
  if (rounded && p.shape.size() == 1) weights_.assign(p, master(p));
}

void CpuTrainState::load_optimizer_state(const std::string& path) {
  SafetensorsFile file(path);
  const long step = optimizer_state_step(file);
  for (const ParameterSpec* p : group_.members()) {
    read_optimizer_moment(file, Moment::First, *p, adam_m_.data() + group_.offset(*p));
    read_optimizer_moment(file, Moment::Second, *p, adam_v_.data() + group_.offset(*p));
  }
  step_ = step;
}

}  // namespace zn::model
