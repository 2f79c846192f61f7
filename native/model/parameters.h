// Mistral's configuration (HF MistralConfig's fields) and its parameter table: every parameter
// in Hugging Face names and layouts, laid end to end as the master, gradient and moment buffers
// hold them, and an index of where each layer's parameters sit in the table.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace zn::model {

struct MistralConfig {
  long vocab_size = 0;
  long hidden_size = 0;
  long intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // HF: config.head_dim, else hidden_size / num_attention_heads
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  long sliding_window = 0;  // <= 0: none (HF sliding_window: null)
  bool tie_word_embeddings = false;
  long pad_token_id = -1;  // < 0: none; otherwise that embedding row gets no gradient

  void validate() const;  // throws zn::Error naming the bad field
  long q_dim() const { return long(num_heads) * head_dim; }
  long kv_dim() const { return long(num_kv_heads) * head_dim; }
};

// One parameter: HF name and shape, its place in the master (and bf16, gradient, moment)
// buffers, and whether AdamW decays it (HF Trainer.get_decay_parameter_names: not norms).
struct ParameterSpec {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;  // in elements
  size_t numel = 0;
  bool decay = true;
};

std::vector<ParameterSpec> parameter_table(const MistralConfig& config);
size_t parameter_count(const std::vector<ParameterSpec>& table);  // total elements

// A frozen bf16 model keeps no f32 master: the kernels read bf16 weights, and only the norm
// weights (the 1-D parameters) stay f32, in a compact buffer. norm_slots gives each parameter's
// offset there (kNoSlot for a matrix) and returns the buffer's length.
constexpr size_t kNoSlot = ~size_t(0);
size_t norm_slots(const std::vector<ParameterSpec>& table, std::vector<size_t>* slots);
const ParameterSpec& find_parameter(const std::vector<ParameterSpec>& table, const std::string& name);  // throws when unknown

// Parameters trained together: the unit a train state covers (its gradients, moments and
// master are laid out by the group, members end to end in table order). A parameter outside
// every trained group is frozen: no gradient, no optimizer state, and in bf16 no f32 master.
// A whole model's training is one group of the whole table (offsets equal to the table's);
// LoRA's adapters are a group of their own over a frozen base.
class ParameterGroup {
 public:
  // The members of `table` whose names are not in `frozen` (each of which must name one).
  ParameterGroup(const std::vector<ParameterSpec>& table, const std::vector<std::string>& frozen = {});

  const std::vector<const ParameterSpec*>& members() const { return members_; }
  size_t numel() const { return numel_; }
  bool contains(const ParameterSpec& p) const { return slot(p) != kNoSlot; }
  size_t offset(const ParameterSpec& p) const;  // in the group's layout; throws for a non-member
  bool whole_table() const { return members_.size() == slots_.size(); }

 private:
  size_t slot(const ParameterSpec& p) const;

  const ParameterSpec* table_begin_;
  std::vector<const ParameterSpec*> members_;
  std::vector<size_t> slots_;  // by table index: the group offset, or kNoSlot
  size_t numel_ = 0;
};

// Where each part of the model sits in a parameter table (pointers into that table).
struct LayerParameters {
  const ParameterSpec *input_norm, *q, *k, *v, *o, *post_norm, *gate, *up, *down;
};
struct ParameterIndex {
  std::vector<LayerParameters> layers;
  const ParameterSpec* embed = nullptr;
  const ParameterSpec* final_norm = nullptr;
  const ParameterSpec* lm_head = nullptr;  // == embed when tied
};
ParameterIndex index_parameters(const MistralConfig& config, const std::vector<ParameterSpec>& table);

}  // namespace zn::model
