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

void CpuWeights::assign_range(const ParameterSpec& p, ElementRange range, const float* values) {
  if (range.empty()) return;
  if (!is_bf16()) {
    std::memcpy(f32_.data() + p.offset + range.begin, values, range.size() * sizeof(float));
    return;
  }
  round_to_bf16(range.size(), values, bf16_.data() + p.offset + range.begin);
  if (norm_slot(p) != kNoSlot) std::memcpy(norms_.data() + norm_slot(p) + range.begin, values, range.size() * sizeof(float));
}

float* CpuWeights::norm_data(const ParameterSpec& p) {
  return is_bf16() && norm_slot(p) != kNoSlot ? norms_.data() + norm_slot(p) : nullptr;
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
                             long max_tokens, CpuWeights& weights, bool dense_embedding, ShardSpec shard)
    : config_(config), group_(group), index_(index), weights_(weights), spec_(shard) {
  const size_t n = group.numel();
  // The embedding is the table's first parameter, so when the group trains it, it is the group's
  // first member too, and the dense gradients of the others keep their group offsets less its
  // size when it has a RowGradient instead.
  ZN_CHECK(index.embed->offset == 0, "model: the embedding must be the first parameter");
  if (!config.tie_word_embeddings && !dense_embedding && group.contains(*index.embed)) {
    embed_grad_ = std::make_unique<RowGradient>(config.vocab_size, config.hidden_size, max_tokens);
    embed_slots_.resize(size_t(max_tokens));
  }
  shard_ = shard_range(n, shard);
  ZN_CHECK(!sharded() || !embed_grad_, "model: sharded optimizer state needs the embedding's gradient dense "
           "(denseEmbeddingGradient), as the ranks sum whole gradient buffers");
  if (weights.is_bf16()) master_.assign(shard_.size(), 0.0f);
  grads_.assign(n - (embed_grad_ ? index.embed->numel : 0), 0.0f);
  adam_m_.assign(shard_.size(), 0.0f);
  adam_v_.assign(shard_.size(), 0.0f);
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
  ZN_CHECK(!sharded(), "model: the f32 master of '", p.name, "' is sharded across ", spec_.count,
           " ranks (zero_stage); this rank holds only its part");
  return master_.data() + group_.offset(p);
}

const float* CpuTrainState::master(const ParameterSpec& p) const {
  return const_cast<CpuTrainState*>(this)->master(p);
}

const float* CpuTrainState::whole_master(const ParameterSpec& p) const {
  return !master_.empty() && sharded() ? nullptr : master(p);
}

float* CpuTrainState::master_at(const ParameterSpec& p, size_t at) {
  if (master_.empty()) return weights_.f32_data() + p.offset + at;
  return master_.data() + moment_index(p, at);
}

ElementRange CpuTrainState::owned(const ParameterSpec& p) const { return owned_part(group_, shard_, p); }

void CpuTrainState::assign_master(const ParameterSpec& p, const float* values) {
  const ElementRange part = owned(p);
  std::memcpy(master_at(p, part.begin), values + part.begin, part.size() * sizeof(float));
}

void CpuTrainState::publish() {
  if (master_.empty()) return;  // f32 mode: the master is the weights
  for (const ParameterSpec* p : group_.members()) {
    const ElementRange part = owned(*p);
    if (!part.empty()) weights_.assign_range(*p, part, master_at(*p, part.begin));
  }
}

double CpuTrainState::grad_sum_of_squares(bool shard_only) const {
  if (shard_only) {
    ZN_CHECK(!embed_grad_, "model: a shard's sum of squares needs a dense gradient");
    return cpu::sum_of_squares(long(shard_.size()), grads_.data() + shard_.begin);
  }
  const double squares = cpu::sum_of_squares(long(grads_.size()), grads_.data());
  return squares + (embed_grad_ ? embed_grad_->sum_of_squares() : 0.0);
}

void CpuTrainState::step(const AdamWOptions& hp, float clip_scale) {
  ++step_;
  for (const ParameterSpec* p : group_.members()) step_parameter(*p, hp, clip_scale);
}

std::vector<WeightSegment> CpuTrainState::weight_segments() {
  void* data = weights_.is_bf16() ? static_cast<void*>(weights_.bf16_data()) : static_cast<void*>(weights_.f32_data());
  return group_weight_segments(group_, spec_.count, data, weights_.is_bf16(),
                               [this](const ParameterSpec& p) { return weights_.norm_data(p); });
}

std::vector<size_t> CpuTrainState::gradient_shard_counts() const {
  ZN_CHECK(!embed_grad_, "model: a gradient held by rows has no shards");
  return shard_counts(grads_.size(), spec_.count, {0, grads_.size()});
}

OptimizerMoments CpuTrainState::moments() const {
  ZN_CHECK(!sharded(), "model: this rank holds a shard of the optimizer state (zero_stage): write its shard file");
  return {&group_, adam_m_.data(), adam_v_.data()};
}

OptimizerShard CpuTrainState::shard_moments() const {
  return {&group_, shard_, adam_m_.data(), adam_v_.data(), master_.empty() ? nullptr : master_.data()};
}

// AdamW writes the bf16 rounding of what it updates, so the weights' matrices are current when
// it returns; only the f32 norm weights are copied after.
// Sharded, only the owned part of the member steps (its elements [part.begin, part.end)).
void CpuTrainState::step_parameter(const ParameterSpec& p, const AdamWOptions& hp, float clip_scale) {
  const ElementRange part = owned(p);
  if (part.empty()) return;
  const cpu::AdamWStep s{hp.lr, hp.beta1, hp.beta2, hp.eps, p.decay ? hp.weight_decay : 0.0, step_, clip_scale};
  bf16* const rounded = weights_.is_bf16() ? weights_.bf16_data() + p.offset : nullptr;
  auto update = [&](size_t begin, size_t count, const float* g) {
    cpu::adamw_update(long(count), s, master_at(p, begin), g, adam_m_.data() + moment_index(p, begin),
                      adam_v_.data() + moment_index(p, begin), rounded ? rounded + begin : nullptr);
  };
  if (!has_row_gradient(p)) {
    update(part.begin, part.size(), grads_.data() + dense_grad_offset(p) + part.begin);
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
  if (rounded && p.shape.size() == 1) weights_.assign_range(p, part, master_at(p, part.begin));
}

// A bf16 master found in the files (a sharded bf16 run's) replaces the one the weights file gave.
void CpuTrainState::load_optimizer_state(const std::vector<const SafetensorsFile*>& files) {
  bool master_read = false;
  const OptimizerShardTarget target{&group_, shard_, adam_m_.data(), adam_v_.data(),
                                    master_.empty() ? nullptr : master_.data()};
  step_ = read_optimizer_range(files, target, &master_read);
  if (master_read) publish();
}

}  // namespace zn::model
