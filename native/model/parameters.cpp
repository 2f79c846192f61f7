// Mistral's config checks and parameter table (parameters.h).
#include "model/parameters.h"

#include <algorithm>
#include <cmath>

#include "core/errors.h"

namespace zn::model {

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

ParameterGroup::ParameterGroup(const std::vector<ParameterSpec>& table, const std::vector<std::string>& frozen)
    : table_begin_(table.data()), slots_(table.size(), kNoSlot) {
  for (const std::string& name : frozen) find_parameter(table, name);  // names a parameter
  for (size_t i = 0; i < table.size(); ++i) {
    if (std::find(frozen.begin(), frozen.end(), table[i].name) != frozen.end()) continue;
    members_.push_back(&table[i]);
    slots_[i] = numel_;
    numel_ += table[i].numel;
  }
}

size_t ParameterGroup::slot(const ParameterSpec& p) const {
  const size_t i = size_t(&p - table_begin_);
  return i < slots_.size() ? slots_[i] : kNoSlot;
}

size_t ParameterGroup::offset(const ParameterSpec& p) const {
  const size_t at = slot(p);
  ZN_CHECK(at != kNoSlot, "model: '", p.name, "' is frozen (it belongs to no trained parameter group)");
  return at;
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

}  // namespace zn::model
