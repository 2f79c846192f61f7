// Who holds each parameter of a model, for both devices' models (Weights/State: CpuWeights and
// CpuTrainState, or CudaWeights and CudaTrainState): the base table with its weights and, for
// its trained group, a train state (none when every base parameter is frozen); LoRA's adapter
// table with its own weights and, when training, its own state; and the decoder's views of them
// (the adapters it adds, the sinks its backward fills). Each model builds the members (storage
// differs by device); the lookups here are the same for both.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/errors.h"
#include "model/decoder.h"
#include "model/lora.h"
#include "model/optimizer_state.h"
#include "model/parameters.h"

namespace zn::model {

template <class Weights, class State>
struct ParameterOwners {
  std::vector<ParameterSpec> params;
  ParameterIndex index;                     // pointers into params
  std::unique_ptr<ParameterGroup> trained;  // all but ModelOptions::frozen
  std::unique_ptr<Weights> weights;
  std::unique_ptr<State> state;  // trainable, for trained (unless it is empty)
  std::unique_ptr<LoraTable> lora;
  std::unique_ptr<ParameterGroup> adapter_group;
  std::unique_ptr<Weights> adapter_weights;
  std::unique_ptr<State> adapter_state;  // trainable
  Adapters adapters;
  std::unique_ptr<GradientSinks> gradients;  // every state, for the decoder's backward

  // The decoder's views, once weights and states exist.
  void link() {
    std::vector<GradientSink*> sinks;
    for (State* s : states()) sinks.push_back(s);
    gradients = std::make_unique<GradientSinks>(sinks);
    if (lora) adapters = {lora.get(), adapter_weights.get()};
  }

  std::vector<State*> states() const {
    std::vector<State*> out;
    for (State* s : {state.get(), adapter_state.get()})
      if (s) out.push_back(s);
    return out;
  }

  bool is_adapter(const ParameterSpec& p) const {
    if (!lora) return false;
    const std::vector<ParameterSpec>& table = lora->parameters();
    return &p >= table.data() && &p < table.data() + table.size();
  }

  State* state_of(const ParameterSpec& p) const {  // null: frozen
    if (is_adapter(p)) return adapter_state.get();
    return state && trained->contains(p) ? state.get() : nullptr;
  }

  Weights& weights_of(const ParameterSpec& p) const { return is_adapter(p) ? *adapter_weights : *weights; }

  const std::vector<ParameterSpec>& adapter_parameters() const {
    static const std::vector<ParameterSpec> none;
    return lora ? lora->parameters() : none;
  }

  // A base or adapter parameter (PEFT's names start "base_model.model.": adapters, and the saved
  // modules under the names the adapter file gives them); throws when unknown.
  const ParameterSpec& find(const std::string& name) const {
    if (lora && name.rfind("base_model.model.", 0) == 0) {
      if (const ParameterSpec* p = lora->find(name)) return *p;
      fail("model: no parameter named '", name, "'");
    }
    return find_parameter(params, name);
  }

  long optimizer_step() const {
    const State* s = state ? state.get() : adapter_state.get();
    return s ? s->step() : 0;
  }

  // ZeRO on both devices, over every state in order (the base's, then the adapters'): each
  // gradient buffer's per-rank counts, the sum of squares of this rank's shard of the gradients,
  // and the weight runs the ranks all-gather after a sharded step.
  std::vector<std::vector<size_t>> gradient_shard_counts() const {
    std::vector<std::vector<size_t>> out;
    for (const State* s : states()) out.push_back(s->gradient_shard_counts());
    return out;
  }
  double shard_grad_sum_of_squares() const {
    double squares = 0;
    for (const State* s : states()) squares += s->grad_sum_of_squares(true);
    return squares;
  }
  std::vector<WeightSegment> weight_segments() const {
    std::vector<WeightSegment> out;
    for (State* s : states()) {
      std::vector<WeightSegment> group = s->weight_segments();
      out.insert(out.end(), group.begin(), group.end());
    }
    return out;
  }

  // ZeRO's optimizer files, the same on both devices: this rank's shard file of every state, and
  // every state's range from any set of optimizer state files (optimizer_state.h).
  void save_optimizer_shard(const std::string& path, ShardSpec shard) const {
    std::vector<OptimizerShard> groups;
    for (const State* s : states()) groups.push_back(s->shard_moments());
    write_optimizer_shard(path, groups, optimizer_step(), shard);
  }
  void load_optimizer_files(const std::vector<std::string>& paths) const {
    with_optimizer_files(paths, [this](const std::vector<const SafetensorsFile*>& files) {
      for (State* s : states()) s->load_optimizer_state(files);
    });
  }

  // A training forward's lora_dropout draw (null without dropout): the next micro-batch of the
  // current optimizer step, counted from 0 again once the step has moved (or after a resume).
  const LoraDropoutDraw* next_dropout_draw() {
    if (!lora || lora->config().dropout == 0) return nullptr;
    const long step = optimizer_step();
    if (step != dropout_step_) {
      dropout_step_ = step;
      dropout_micro_batches_ = 0;
    }
    dropout_draw_ = {lora->config().dropout_seed, uint64_t(step), dropout_micro_batches_++};
    return &dropout_draw_;
  }

 private:
  LoraDropoutDraw dropout_draw_;  // the last training forward's, which its backward reads again
  long dropout_step_ = -1;
  uint64_t dropout_micro_batches_ = 0;
};

}  // namespace zn::model
