// LoRA adapters (Hu et al. 2021) on Mistral's projections, as PEFT's LoraLayer computes them:
//   y = x W^T + s * (dropout(x) A^T) B^T,   A [r, in], B [out, r],   s = alpha / r (rsLoRA: alpha / sqrt(r))
// dropout (lora_dropout) acts in training forwards only (PEFT's nn.Dropout per adapted layer, each
// projection its own mask), with counter-based masks (LoraDropoutDraw) instead of torch's RNG.
// The adapters are a parameter table of their own, named as PEFT saves them
// ("base_model.model.<base module>.lora_A.weight"), so the same CpuWeights / CudaWeights and
// train state serve them as the base: the adapters are one trained parameter group over a frozen
// (and shareable) base. The decoder adds the adapter term to each targeted projection (decoder.h,
// Adapters); with the adapters switched off the model is the base model (TRL's reference for a
// fresh adapter).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/parameters.h"

namespace zn::model {

struct LoraConfig {
  int rank = 0;  // 0: no adapters
  double alpha = 8;
  bool rslora = false;
  // PEFT module names ("q_proj", "gate_proj", ...); "all-linear" is every projection (PEFT never
  // adapts the lm_head under all-linear).
  std::vector<std::string> target_modules;
  // Base parameters trained in full beside the adapters (PEFT's modules_to_save, e.g.
  // "lm_head.weight"), by base name; the adapter file holds them under PEFT's names
  // (peft_saved_name). Training them is the caller's (not in ModelOptions::frozen).
  std::vector<std::string> modules_to_save;
  double dropout = 0;  // lora_dropout, in [0, 1): the drop probability of the adapters' input
  // The masks' seed (the trainer's seed): with the step and micro-batch it names every mask.
  uint64_t dropout_seed = 0;

  double scale() const;  // alpha / r, or alpha / sqrt(r) with rslora
  void validate() const;  // throws zn::Error naming the field
};

// The projections of a decoder layer PEFT can target, in the order of LayerParameters.
const std::vector<std::string>& lora_module_names();

// A targeted projection's adapter pair (pointers into the adapter table).
struct LoraPair {
  const ParameterSpec* a = nullptr;  // [r, in]
  const ParameterSpec* b = nullptr;  // [out, r]
  int layer = 0;                     // the decoder layer
  int projection = 0;                // its index in lora_module_names()
};

// Which training forward a dropout mask belongs to: the optimizer step it accumulates into and
// the forward's index among that step's micro-batches. Both come back on resume (the step from
// the optimizer state, the micro-batch counting from 0 at a step boundary), so a resumed run draws
// the masks the uninterrupted one drew.
struct LoraDropoutDraw {
  uint64_t seed = 0;
  uint64_t step = 0;
  uint64_t micro_batch = 0;
};

// The stream key of the mask over a projection's input [tokens, in] in one training forward:
// element (row, col) is kept when counter_bits(key, row * in + col) >= p * 2^64
// (kernels/cpu/dropout.h). This function and that rule are the masks' specification.
uint64_t lora_dropout_key(const LoraDropoutDraw& draw, int layer, int projection);

// The adapter table for a base table, and where each base projection's pair sits.
class LoraTable {
 public:
  LoraTable(const std::vector<ParameterSpec>& base, const LoraConfig& config);

  const std::vector<ParameterSpec>& parameters() const { return table_; }
  const LoraConfig& config() const { return config_; }
  // The pair adapting a base parameter, or null when it is not targeted.
  const LoraPair* pair(const ParameterSpec& base) const;
  // The base parameters of config().modules_to_save (pointers into the base table).
  const std::vector<const ParameterSpec*>& saved_modules() const { return saved_; }
  // By PEFT's name: an adapter matrix, or a saved module ("base_model.model.lm_head.weight");
  // null when neither.
  const ParameterSpec* find(const std::string& peft_name) const;

 private:
  LoraConfig config_;
  const ParameterSpec* base_begin_;
  std::vector<ParameterSpec> table_;
  std::vector<LoraPair> pairs_;        // by base table index (a null pair: not targeted)
  std::vector<const ParameterSpec*> saved_;
};

// PEFT's key for a base parameter's adapter matrix: "base_model.model.<module>.lora_A.weight".
std::string lora_parameter_name(const std::string& base_name, char matrix);
// PEFT's key for a saved module's parameter in the adapter file: "base_model.model.<base name>".
std::string peft_saved_name(const std::string& base_name);

}  // namespace zn::model
