// The optimizer state file both models write and read (a checkpoint written on one device
// resumes on the other): f32 tensors exp_avg.<parameter> and exp_avg_sq.<parameter> in the
// parameter's shape for every trained parameter (of every trained group: the base's, LoRA's
// adapters), metadata {format: zephyr-native-adamw, step}.
//
// Sharded across ZeRO ranks (zero_shard.h), each rank writes its own file of the same tensor
// names holding 1-D f32 slices of the parameters its range overlaps, metadata {format:
// zephyr-native-adamw-shard, step, rank, ranks, "slice.<parameter>": the slice's first element}
// (and in bf16 mode master.<parameter>, the slice of the f32 master). The reader fills any range
// from any set of such files (one process's file, or N ranks' shard files, for any N'), checking
// that every element of the range is found exactly once and that the files agree on the step.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "model/parameters.h"
#include "model/zero_shard.h"

namespace zn {
class SafetensorsFile;
}

namespace zn::model {

enum class Moment { First, Second };  // exp_avg, exp_avg_sq

// Host copies of one trained group's moments, laid out as the group.
struct OptimizerMoments {
  const ParameterGroup* group = nullptr;
  const float* exp_avg = nullptr;
  const float* exp_avg_sq = nullptr;
};

// One rank's range of a group: moments (and bf16 mode's master, else null) laid out from
// range.begin of the group's layout.
struct OptimizerShard {
  const ParameterGroup* group = nullptr;
  ElementRange range;
  const float* exp_avg = nullptr;
  const float* exp_avg_sq = nullptr;
  const float* master = nullptr;
};

struct OptimizerShardTarget {
  const ParameterGroup* group = nullptr;
  ElementRange range;
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  float* master = nullptr;  // null: the files' masters are not wanted
};

// Writes one rank's shard file (atomically).
void write_optimizer_shard(const std::string& path, const std::vector<OptimizerShard>& groups, long step,
                           ShardSpec shard);
// Fills a range from optimizer state files (full or shard files); returns the step, and whether
// the files held the master of the range (bf16 shard files).
long read_optimizer_range(const std::vector<const SafetensorsFile*>& files, const OptimizerShardTarget& target,
                          bool* master_read);

// Opens every file of `paths` (safetensors, kept open while `read` runs) and hands them to `read`:
// the models' load_optimizer_state over any set of optimizer state files.
void with_optimizer_files(const std::vector<std::string>& paths,
                          const std::function<void(const std::vector<const SafetensorsFile*>&)>& read);

// Writes the file (atomically) holding every group's members (a frozen parameter has no moments
// and no tensors in the file).
void write_optimizer_state(const std::string& path, const std::vector<OptimizerMoments>& groups, long step);
// The step recorded in an open optimizer state file (throws naming the file when absent or bad).
long optimizer_state_step(const SafetensorsFile& file);
// Reads one moment of one parameter (numel f32 values) from an open optimizer state file.
void read_optimizer_moment(const SafetensorsFile& file, Moment moment, const ParameterSpec& p, float* out);

}  // namespace zn::model
