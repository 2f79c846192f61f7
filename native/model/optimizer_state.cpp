// The optimizer state file (optimizer_state.h).
#include "model/optimizer_state.h"

#include <cstdlib>

#include "core/errors.h"
#include "model/safetensors.h"

namespace zn::model {

namespace {

std::string optimizer_tensor_name(Moment moment, const ParameterSpec& p) {
  return (moment == Moment::First ? "exp_avg." : "exp_avg_sq.") + p.name;
}

}  // namespace

void write_optimizer_state(const std::string& path, const std::vector<OptimizerMoments>& groups, long step) {
  std::vector<StTensorToWrite> tensors;
  for (const OptimizerMoments& g : groups) {
    for (const ParameterSpec* p : g.group->members()) {
      const size_t at = g.group->offset(*p);
      tensors.push_back({optimizer_tensor_name(Moment::First, *p), StDType::F32, p->shape, g.exp_avg + at});
      tensors.push_back({optimizer_tensor_name(Moment::Second, *p), StDType::F32, p->shape, g.exp_avg_sq + at});
    }
  }
  write_safetensors(path, tensors, {{"format", "zephyr-native-adamw"}, {"step", std::to_string(step)}});
}

long optimizer_state_step(const SafetensorsFile& file) {
  auto step = file.metadata().find("step");
  ZN_CHECK(step != file.metadata().end(), file.path(), ": not an optimizer state file (no 'step' in its metadata)");
  char* end = nullptr;
  const long parsed = std::strtol(step->second.c_str(), &end, 10);
  ZN_CHECK(end && *end == 0 && parsed >= 0, file.path(), ": bad optimizer step '", step->second, "'");
  return parsed;
}

void read_optimizer_moment(const SafetensorsFile& file, Moment moment, const ParameterSpec& p, float* out) {
  const std::string name = optimizer_tensor_name(moment, p);
  ZN_CHECK(file.find(name), file.path(), ": optimizer state lacks '", name, "'");
  file.read(name, p.shape, DType::F32, out);
}

}  // namespace zn::model
