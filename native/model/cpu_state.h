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
//   Sharded (ZeRO, zero_shard.h: a ShardSpec of several ranks), it holds the moments and in bf16
//   mode the master of its element range of the group only, steps that range, and names the
//   weight segments the ranks then all-gather (weight_segments); the gradients stay whole.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/bf16.h"
#include "model/decoder.h"
#include "model/optimizer_state.h"
#include "model/parameters.h"
#include "model/zero_shard.h"

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
  // Elements [range.begin, range.end) of a parameter from f32 values (bf16 mode: their rounding,
  // and the values of a norm), values[0] being element range.begin.
  void assign_range(const ParameterSpec& p, ElementRange range, const float* values);
  // bf16 mode: a norm weight's f32 values (writable, for the ranks' all-gather); null otherwise.
  float* norm_data(const ParameterSpec& p);
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
                long max_tokens, CpuWeights& weights, bool dense_embedding = false, ShardSpec shard = {});
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
  // shard_only: over this rank's range alone (ZeRO stage 2, whose ranks hold only their range's
  // summed gradient).
  double grad_sum_of_squares(bool shard_only = false) const;
  // Steps this rank's range (the whole group when not sharded).
  void step(const AdamWOptions& hp, float clip_scale);
  long step() const { return step_; }

  // The f32 master values of a member (the weights' own in f32 mode): loading writes them, then
  // publish() gives the weights their rounding. Refused for a bf16 master sharded across ranks
  // (whole_master is null then; assign_master writes the owned part).
  float* master(const ParameterSpec& p);
  const float* master(const ParameterSpec& p) const;
  const float* whole_master(const ParameterSpec& p) const;
  // The owned part of a member's master from the member's whole f32 values.
  void assign_master(const ParameterSpec& p, const float* values);
  void publish();

  const ShardSpec& shard_spec() const { return spec_; }
  bool sharded() const { return spec_.count > 1; }
  // This rank's element range of the group's layout ([0, numel) when not sharded).
  ElementRange shard() const { return shard_; }
  // The part of a member this rank owns, in the member's own element numbering (may be empty).
  ElementRange owned(const ParameterSpec& p) const;
  // The runs of the weights the ranks all-gather after a sharded step (f32 mode: the f32 weights;
  // bf16 mode: the bf16 weights, and the f32 norm weights).
  std::vector<WeightSegment> weight_segments();
  // The dense gradient buffer's per-rank counts (the reduce-scatter of ZeRO stage 2).
  std::vector<size_t> gradient_shard_counts() const;

  // The optimizer state file (write_optimizer_state) holds the group's members; not sharded only.
  OptimizerMoments moments() const;
  // This rank's slices (write_optimizer_shard).
  OptimizerShard shard_moments() const;

  // The moments (and masters the files hold) of this rank's range from optimizer state files:
  // one process's file, or every rank's shard files of a checkpoint, of any number of ranks.
  void load_optimizer_state(const std::vector<const SafetensorsFile*>& files);

 private:
  bool has_row_gradient(const ParameterSpec& p) const;
  size_t dense_grad_offset(const ParameterSpec& p) const;  // in grads_, which skips a row-held embedding
  void step_parameter(const ParameterSpec& p, const AdamWOptions& hp, float clip_scale);
  // A member's master / moments from element `at` of the member on (owned elements only).
  float* master_at(const ParameterSpec& p, size_t at);
  size_t moment_index(const ParameterSpec& p, size_t at) const { return group_.offset(p) + at - shard_.begin; }

  const MistralConfig& config_;
  const ParameterGroup& group_;
  const ParameterIndex& index_;
  CpuWeights& weights_;
  ShardSpec spec_;
  ElementRange shard_;         // of the group's layout
  std::vector<float> master_;  // bf16 mode only, the shard of the group's layout
  std::vector<float> grads_;   // all members but a row-held embedding
  std::unique_ptr<RowGradient> embed_grad_;  // untied embeddings
  std::vector<int32_t> embed_slots_;         // each token's slot in embed_grad_
  std::vector<float> adam_m_, adam_v_;  // the shard of the group's layout
  long step_ = 0;
};

}  // namespace zn::model
