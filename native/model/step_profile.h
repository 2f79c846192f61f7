// Where an optimizer step's time goes (ModelOptions::profile_steps; off: nothing is timed and
// nothing is recorded). Host parts by steady_clock; an offloaded GPU step's copies by CUDA events,
// device time summed over the chunks. A part that does not apply stays 0.
#pragma once
#include <chrono>

namespace zn::model {

struct StepProfile {
  double clip = 0;           // the global grad norm: the squares summed (on the model's device) and read back
  double device_adamw = 0;   // GPU, resident optimizer: the multi-tensor AdamW kernels
  double host_adamw = 0;     // the CPU model's AdamW; offloaded: the host's passes over the chunks
  double gradient_wait = 0;  // offloaded: the host waiting for a chunk's gradients to arrive
  double upload_wait = 0;    // offloaded: waiting, after the host's pass, for the last weight uploads
  double norms = 0;          // bf16 GPU model: the f32 norm weights refreshed from the master
  double gradient_copy = 0;  // offloaded: device time of the gradient copies (CUDA events)
  double weight_upload = 0;  // offloaded: device time of the weight uploads (CUDA events)
};

// Adds the seconds since its creation (or the last lap) to a StepProfile field; off (profiling
// off), it never reads the clock.
class StepTimer {
 public:
  explicit StepTimer(bool on) : on_(on) {
    if (on_) start_ = std::chrono::steady_clock::now();
  }
  // Adds the time since the last lap to *into (null: to nothing, just starts the next lap).
  void lap(double* into) {
    if (!on_) return;
    const auto now = std::chrono::steady_clock::now();
    if (into) *into += std::chrono::duration<double>(now - start_).count();
    start_ = now;
  }

 private:
  bool on_;
  std::chrono::steady_clock::time_point start_{};
};

}  // namespace zn::model
