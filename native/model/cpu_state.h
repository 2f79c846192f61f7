// The CPU model's parameters, split by owner:
// - CpuWeights: what the kernels read (the decoder's WeightSource). f32 mode: every parameter in
//   f32. bf16 mode: every parameter's bf16 rounding (the matmul operands) and the norm weights
//   (the 1-D parameters) in f32. Nothing else: a frozen model (a DPO reference, a generator) is
//   weights alone, and several readers may share them while nobody trains them.
// - CpuTrainState: what training adds for one parameter group (parameters.h; the decoder's
//   GradientSink): the gradients (an untied embedding's by rows, model/row_gradient.h), AdamW's
//   moments and step count, and in bf16 mode the f32 master the step updates, all laid out by
//   the group; the step then writes the weights (in f32 mode it updates the weights' own f32
//   values, which are the master). Parameters outside the group are frozen: it holds nothing
//   for them and gives them no gradient.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/bf16.h"
#include "model/decoder.h"
#include "model/optimizer_state.h"
#include "model/parameters.h"

namespace zn::model {

enum class Precision;
struct AdamWOptions;
class RowGradient;

class CpuWeights final : public WeightSource {
 public:
  CpuWeights(const std::vector<ParameterSpec>& table, Precision precision);
  // Bytes held for a table in a precision.
  static size_t bytes(const std::vector<ParameterSpec>& table, Precision precision);

  ConstTensor weight(const ParameterSpec& p) const override;
  const float* norm_weight(const ParameterSpec& p) const override;

  // One parameter from f32 values (bf16 mode: their rounding, and the values of a norm).
  void assign(const ParameterSpec& p, const float* values);
  // f32 values of a parameter where the weights hold them (f32 mode, or a norm), else null.
  const float* f32_values(const ParameterSpec& p) const;
  void read(const ParameterSpec& p, float* out) const;  // widened to f32
  const bf16* bf16_values(const ParameterSpec& p) const { return bf16_.data() + p.offset; }

  // For the train state's step: f32 mode's values (updated in place), bf16 mode's rounding.
  float* f32_data() { return f32_.data(); }
  bf16* bf16_data() { return bf16_.data(); }
  bool is_bf16() const { return !bf16_.empty(); }

 private:
  size_t norm_slot(const ParameterSpec& p) const { return norm_slots_[size_t(&p - table_.data())]; }

  const std::vector<ParameterSpec>& table_;
  std::vector<float> f32_;    // f32 mode
  std::vector<bf16> bf16_;    // bf16 mode
  std::vector<float> norms_;  // bf16 mode: the norm weights, at norm_slots_
  std::vector<size_t> norm_slots_;
};

class CpuTrainState final : public GradientSink {
 public:
  // max_tokens: the most tokens one backward carries (the embedding's row slots).
  // dense_embedding: an untied embedding's gradient as a dense buffer too (not by rows).
  CpuTrainState(const MistralConfig& config, const ParameterGroup& group, const ParameterIndex& index,
                long max_tokens, CpuWeights& weights, bool dense_embedding = false);
  ~CpuTrainState() override;

  const ParameterGroup& group() const { return group_; }
  // Dense gradients only (not a row-held embedding's); null for a parameter outside the group.
  float* grad(const ParameterSpec& p) override;
  // The embedding's gradient from d loss / d (embedding output) of a batch's tokens (nothing
  // when the group does not train the embedding).
  void embedding_backward(long tokens, const int32_t* ids, const float* dres);
  void read_gradient(const ParameterSpec& p, float* out) const;
  void zero_grad();
  // The whole group's gradient as one f32 buffer (laid out by the group); throws when an
  // untied embedding's gradient is held by rows.
  std::pair<float*, size_t> dense_gradients();
  // The sum of the squared gradients (the global norm of torch's clip_grad_norm_ sums it over
  // every trained group), then one AdamW step with the gradients scaled by clip_scale and the
  // weights from the new master.
  double grad_sum_of_squares() const;
  void step(const AdamWOptions& hp, float clip_scale);
  long step() const { return step_; }

  // The f32 master values of a member (the weights' own in f32 mode): loading writes them, then
  // publish() gives the weights their rounding.
  float* master(const ParameterSpec& p);
  const float* master(const ParameterSpec& p) const;
  void publish();

  // The optimizer state file (write_optimizer_state) holds the group's members.
  OptimizerMoments moments() const { return {&group_, adam_m_.data(), adam_v_.data()}; }

  void load_optimizer_state(const std::string& path);

 private:
  bool has_row_gradient(const ParameterSpec& p) const;
  size_t dense_grad_offset(const ParameterSpec& p) const;  // in grads_, which skips a row-held embedding
  void step_parameter(const ParameterSpec& p, const AdamWOptions& hp, float clip_scale);

  const MistralConfig& config_;
  const ParameterGroup& group_;
  const ParameterIndex& index_;
  CpuWeights& weights_;
  std::vector<float> master_;  // bf16 mode only, laid out by the group
  std::vector<float> grads_;   // all members but a row-held embedding
  std::unique_ptr<RowGradient> embed_grad_;  // untied embeddings
  std::vector<int32_t> embed_slots_;         // each token's slot in embed_grad_
  std::vector<float> adam_m_, adam_v_;
  long step_ = 0;
};

}  // namespace zn::model
