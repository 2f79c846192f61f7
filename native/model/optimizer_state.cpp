// The optimizer state file (optimizer_state.h).
#include "model/optimizer_state.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>

#include "core/errors.h"
#include "model/safetensors.h"

namespace zn::model {

namespace {

std::string optimizer_tensor_name(Moment moment, const ParameterSpec& p) {
  return (moment == Moment::First ? "exp_avg." : "exp_avg_sq.") + p.name;
}

std::string master_tensor_name(const ParameterSpec& p) { return "master." + p.name; }

// Where a tensor of a parameter starts in the parameter: its slice.<name> entry in a shard file,
// 0 in one process's file (whose tensors are whole).
size_t slice_begin(const SafetensorsFile& file, const ParameterSpec& p, const StTensorInfo& t) {
  auto entry = file.metadata().find("slice." + p.name);
  const size_t length = size_t(t.numel());
  if (entry == file.metadata().end()) {
    ZN_CHECK(length == p.numel, file.path(), ": '", t.name, "' holds ", length, " values and names no slice ('slice.",
             p.name, "'), but '", p.name, "' has ", p.numel);
    return 0;
  }
  char* end = nullptr;
  const long long begin = std::strtoll(entry->second.c_str(), &end, 10);
  ZN_CHECK(end && *end == 0 && begin >= 0 && size_t(begin) + length <= p.numel, file.path(), ": bad slice.", p.name,
           " '", entry->second, "' for ", length, " values of a parameter of ", p.numel);
  return size_t(begin);
}

// Copies the part of `name`'s slice that falls in [want.begin, want.end) of parameter p to
// out[i - want.begin]; returns how many elements it copied.
size_t copy_overlap(const SafetensorsFile& file, const std::string& name, const ParameterSpec& p, ElementRange want,
                    float* out) {
  const StTensorInfo* t = file.find(name);
  if (!t) return 0;
  ZN_CHECK(t->dtype == StDType::F32, file.path(), ": '", name, "' must be F32, is ", st_dtype_name(t->dtype));
  const size_t begin = slice_begin(file, p, *t);
  const ElementRange got = intersect({begin, begin + size_t(t->numel())}, want);
  if (got.empty()) return 0;
  const char* bytes = static_cast<const char*>(file.data(*t));
  std::memcpy(out + (got.begin - want.begin), bytes + (got.begin - begin) * sizeof(float), got.size() * sizeof(float));
  return got.size();
}

}  // namespace

void write_optimizer_shard(const std::string& path, const std::vector<OptimizerShard>& groups, long step,
                           ShardSpec shard) {
  std::vector<StTensorToWrite> tensors;
  std::map<std::string, std::string> metadata{{"format", "zephyr-native-adamw-shard"},
                                              {"step", std::to_string(step)},
                                              {"rank", std::to_string(shard.rank)},
                                              {"ranks", std::to_string(shard.count)}};
  for (const OptimizerShard& g : groups) {
    for (const ParameterSpec* p : g.group->members()) {
      const size_t at = g.group->offset(*p);
      const ElementRange part = intersect({at, at + p->numel}, g.range);
      if (part.empty()) continue;
      const size_t local = part.begin - g.range.begin;
      const std::vector<int64_t> shape{int64_t(part.size())};
      metadata["slice." + p->name] = std::to_string(part.begin - at);
      tensors.push_back({optimizer_tensor_name(Moment::First, *p), StDType::F32, shape, g.exp_avg + local});
      tensors.push_back({optimizer_tensor_name(Moment::Second, *p), StDType::F32, shape, g.exp_avg_sq + local});
      if (g.master) tensors.push_back({master_tensor_name(*p), StDType::F32, shape, g.master + local});
    }
  }
  write_safetensors(path, tensors, metadata);
}

long read_optimizer_range(const std::vector<const SafetensorsFile*>& files, const OptimizerShardTarget& target,
                          bool* master_read) {
  ZN_CHECK(!files.empty(), "model: no optimizer state files given");
  const long step = optimizer_state_step(*files.front());
  for (const SafetensorsFile* f : files) {
    ZN_CHECK(optimizer_state_step(*f) == step, f->path(), ": optimizer step ", optimizer_state_step(*f), ", but ",
             files.front()->path(), " has ", step, " (files of different checkpoints?)");
  }
  size_t masters = 0, wanted = 0;
  for (const ParameterSpec* p : target.group->members()) {
    const size_t at = target.group->offset(*p);
    const ElementRange part = intersect({at, at + p->numel}, target.range);
    if (part.empty()) continue;
    const ElementRange want{part.begin - at, part.end - at};
    const size_t local = part.begin - target.range.begin;
    size_t first = 0, second = 0, master = 0;
    for (const SafetensorsFile* f : files) {
      first += copy_overlap(*f, optimizer_tensor_name(Moment::First, *p), *p, want, target.exp_avg + local);
      second += copy_overlap(*f, optimizer_tensor_name(Moment::Second, *p), *p, want, target.exp_avg_sq + local);
      if (target.master) master += copy_overlap(*f, master_tensor_name(*p), *p, want, target.master + local);
    }
    const std::string where = files.size() == 1 ? files.front()->path() : files.front()->path() + " and " +
                                                                            std::to_string(files.size() - 1) + " more";
    ZN_CHECK(first == want.size() && second == want.size(), where, ": the optimizer state of '", p->name, "' elements [",
             want.begin, ", ", want.end, ") is ", first < want.size() ? "incomplete" : "held twice", " (", first,
             " of ", want.size(), " found)");
    ZN_CHECK(master == 0 || master == want.size(), where, ": the f32 master of '", p->name, "' is ",
             master < want.size() ? "incomplete" : "held twice", " (", master, " of ", want.size(), ")");
    masters += master;
    wanted += want.size();
  }
  ZN_CHECK(masters == 0 || masters == wanted, "model: the optimizer state files hold the f32 master of some parameters only");
  if (master_read) *master_read = masters > 0;
  return step;
}

void with_optimizer_files(const std::vector<std::string>& paths,
                          const std::function<void(const std::vector<const SafetensorsFile*>&)>& read) {
  std::vector<std::unique_ptr<SafetensorsFile>> opened;
  std::vector<const SafetensorsFile*> files;
  for (const std::string& path : paths) {
    opened.push_back(std::make_unique<SafetensorsFile>(path));
    files.push_back(opened.back().get());
  }
  read(files);
}

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
