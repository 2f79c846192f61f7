// LoRA's configuration and adapter table (lora.h).
#include "model/lora.h"

#include <algorithm>
#include <cmath>

#include "core/counter_random.h"
#include "core/errors.h"

namespace zn::model {

double LoraConfig::scale() const { return rslora ? alpha / std::sqrt(double(rank)) : alpha / double(rank); }

const std::vector<std::string>& lora_module_names() {
  static const std::vector<std::string> names = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"};
  return names;
}

void LoraConfig::validate() const {
  ZN_CHECK(rank > 0, "lora: lora_r must be positive, got ", rank);
  ZN_CHECK(std::isfinite(alpha) && alpha > 0, "lora: lora_alpha must be positive, got ", alpha);
  ZN_CHECK(!target_modules.empty(), "lora: lora_target_modules is empty");
  ZN_CHECK(dropout >= 0 && dropout < 1, "lora: lora_dropout must be in [0, 1), got ", dropout);
  for (const std::string& m : target_modules) {
    const auto& known = lora_module_names();
    ZN_CHECK(m == "all-linear" || std::find(known.begin(), known.end(), m) != known.end(),
             "lora: lora_target_modules names '", m, "', which is not a Mistral projection (q_proj, k_proj, "
             "v_proj, o_proj, gate_proj, up_proj, down_proj) or all-linear");
  }
}

std::string lora_parameter_name(const std::string& base_name, char matrix) {
  const std::string suffix = ".weight";
  const std::string module = base_name.substr(0, base_name.size() - suffix.size());
  return "base_model.model." + module + ".lora_" + matrix + ".weight";
}

uint64_t lora_dropout_key(const LoraDropoutDraw& draw, int layer, int projection) {
  // "lora" in the seed keeps these streams apart from the weight initialisation's (seed, parameter).
  const uint64_t per_forward = counter_stream_key(counter_stream_key(draw.seed ^ 0x6c6f7261ull, draw.step),
                                                  draw.micro_batch);
  return counter_stream_key(per_forward, uint64_t(layer) * lora_module_names().size() + uint64_t(projection));
}

std::string peft_saved_name(const std::string& base_name) { return "base_model.model." + base_name; }

namespace {

// "model.layers.3.self_attn.q_proj.weight" -> "q_proj"; "" for anything else.
std::string projection_of(const std::string& name) {
  if (name.rfind("model.layers.", 0) != 0) return "";
  const size_t end = name.rfind(".weight");
  const size_t start = name.rfind('.', end - 1);
  const std::string module = name.substr(start + 1, end - start - 1);
  const auto& known = lora_module_names();
  return std::find(known.begin(), known.end(), module) != known.end() ? module : "";
}

// "model.layers.3.self_attn.q_proj.weight" -> 3.
int layer_of(const std::string& name) { return std::stoi(name.substr(std::string("model.layers.").size())); }

int projection_index(const std::string& module) {
  const auto& known = lora_module_names();
  return int(std::find(known.begin(), known.end(), module) - known.begin());
}

bool targeted(const LoraConfig& config, const std::string& module) {
  for (const std::string& m : config.target_modules)
    if (m == "all-linear" || m == module) return true;
  return false;
}

}  // namespace

LoraTable::LoraTable(const std::vector<ParameterSpec>& base, const LoraConfig& config)
    : config_(config), base_begin_(base.data()), pairs_(base.size()) {
  config.validate();
  const int64_t r = config.rank;
  struct Placed {
    size_t base_index, row;  // the base parameter, the first of its two adapter rows
    int layer, projection;
  };
  std::vector<Placed> placed;
  size_t offset = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    const size_t numel = size_t(shape[0] * shape[1]);
    table_.push_back({name, std::move(shape), offset, numel, true});  // HF Trainer decays them
    offset += numel;
  };
  for (size_t i = 0; i < base.size(); ++i) {
    const std::string module = projection_of(base[i].name);
    if (module.empty() || !targeted(config, module)) continue;
    const int64_t out = base[i].shape[0], in = base[i].shape[1];
    placed.push_back({i, table_.size(), layer_of(base[i].name), projection_index(module)});
    add(lora_parameter_name(base[i].name, 'A'), {r, in});
    add(lora_parameter_name(base[i].name, 'B'), {out, r});
  }
  ZN_CHECK(!table_.empty(), "lora: lora_target_modules matches no projection of the model");
  // Pointers once the table has stopped growing.
  for (const Placed& p : placed) pairs_[p.base_index] = {&table_[p.row], &table_[p.row + 1], p.layer, p.projection};
  for (const std::string& name : config.modules_to_save) {
    const ParameterSpec& p = find_parameter(base, name);  // throws naming an unknown one
    ZN_CHECK(!pair(p), "lora: '", name, "' is both adapted and in modules_to_save");
    saved_.push_back(&p);
  }
}

const ParameterSpec* LoraTable::find(const std::string& peft_name) const {
  for (const ParameterSpec& p : table_)
    if (p.name == peft_name) return &p;
  for (const ParameterSpec* p : saved_)
    if (peft_saved_name(p->name) == peft_name) return p;
  return nullptr;
}

const LoraPair* LoraTable::pair(const ParameterSpec& base) const {
  const size_t i = size_t(&base - base_begin_);
  return i < pairs_.size() && pairs_[i].a ? &pairs_[i] : nullptr;
}

}  // namespace zn::model
