// The optimizer state file both models write and read (a checkpoint written on one device
// resumes on the other): f32 tensors exp_avg.<parameter> and exp_avg_sq.<parameter> in the
// parameter's shape for every trained parameter (of every trained group: the base's, LoRA's
// adapters), metadata {format: zephyr-native-adamw, step}.
#pragma once
#include <string>
#include <vector>

#include "model/parameters.h"

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

// Writes the file (atomically) holding every group's members (a frozen parameter has no moments
// and no tensors in the file).
void write_optimizer_state(const std::string& path, const std::vector<OptimizerMoments>& groups, long step);
// The step recorded in an open optimizer state file (throws naming the file when absent or bad).
long optimizer_state_step(const SafetensorsFile& file);
// Reads one moment of one parameter (numel f32 values) from an open optimizer state file.
void read_optimizer_moment(const SafetensorsFile& file, Moment moment, const ParameterSpec& p, float* out);

}  // namespace zn::model
