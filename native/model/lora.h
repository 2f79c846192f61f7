// LoRA adapters (Hu et al. 2021) on Mistral's projections, as PEFT's LoraLayer computes them:
//   y = x W^T + s * (x A^T) B^T,   A [r, in], B [out, r],   s = alpha / r (rsLoRA: alpha / sqrt(r))
// The adapters are a parameter table of their own, named as PEFT saves them
// ("base_model.model.<base module>.lora_A.weight"), so the same CpuWeights / CudaWeights and
// train state serve them as the base: the adapters are one trained parameter group over a frozen
// (and shareable) base. The decoder adds the adapter term to each targeted projection (decoder.h,
// Adapters); with the adapters switched off the model is the base model (TRL's reference for a
// fresh adapter).
#pragma once
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

  double scale() const;  // alpha / r, or alpha / sqrt(r) with rslora
  void validate() const;  // throws zn::Error naming the field
};

// The projections of a decoder layer PEFT can target, in the order of LayerParameters.
const std::vector<std::string>& lora_module_names();

// A targeted projection's adapter pair (pointers into the adapter table).
struct LoraPair {
  const ParameterSpec* a = nullptr;  // [r, in]
  const ParameterSpec* b = nullptr;  // [out, r]
};

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
