// The GPU model's parameters, split by owner as the CPU model's (cpu_state.h):
// - CudaWeights: what the kernels read, on the device (the decoder's WeightSource): f32 in f32
//   mode; in bf16 mode the bf16 rounding of every parameter and the norm weights in f32. A frozen
//   model (the DPO reference) is weights alone.
// - CudaTrainState: what training adds for one parameter group (parameters.h; the decoder's
//   GradientSink): the f32 gradients (one contiguous buffer laid out by the group, so the grad
//   norm reads it at once), AdamW's moments and step count, and the f32 master: the weights' own
//   f32 values in f32 mode, a device buffer in bf16 mode, or, with offload_optimizer, host memory
//   together with the moments (ZeRO-Offload's split: the device keeps what the kernels read and
//   the gradients). A step writes the weights. Parameters outside the group are frozen.
// Device memory comes from the model's one arena (pieces handed in); every copy runs on the
// model's stream.
#pragma once
#include <cuda_runtime_api.h>

#include <memory>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/memory.h"
#include "model/decoder.h"
#include "model/optimizer_state.h"
#include "model/parameters.h"
#include "model/step_profile.h"

namespace zn::model {

enum class Precision;
struct AdamWOptions;
class CudaBackend;
struct OffloadStaging;

// Zeroed host floats (core/memory.h's HugePageMemory): the OS maps pages lazily, so 81 GiB of
// offloaded master and moments cost nothing until written (a std::vector would zero every page
// up front), and in 2 MiB pages where it can, for the host AdamW's streaming passes.
class HostFloats {
 public:
  void allocate(size_t count, const char* what);  // throws zn::Error naming the bytes
  float* data() const { return static_cast<float*>(memory_.data()); }
  bool empty() const { return !memory_.data(); }

 private:
  HugePageMemory memory_;
};

// Where the weights live on the device (laid out by the model's plan).
struct CudaWeightBuffers {
  float* f32_values = nullptr;   // f32 mode
  bf16* bf16_values = nullptr;   // bf16 mode
  float* norms = nullptr;  // bf16 mode: the norm weights, at norm_slots
};

class CudaWeights final : public WeightSource {
 public:
  CudaWeights(const std::vector<ParameterSpec>& table, CudaWeightBuffers buffers, cudaStream_t stream);

  ConstTensor weight(const ParameterSpec& p) const override;
  const float* norm_weight(const ParameterSpec& p) const override;

  bool is_bf16() const { return buffers_.bf16_values != nullptr; }
  const CudaWeightBuffers& buffers() const { return buffers_; }
  float* norm_values(const ParameterSpec& p) const;  // bf16 mode's f32 copy of a norm; else null
  // One parameter from host f32 values: f32 copied; bf16 rounded on the host (to nearest even, as
  // the device rounds) and a norm's values kept in f32 too. Waits for the copies.
  void assign(const ParameterSpec& p, const float* host);
  void read(const ParameterSpec& p, float* host) const;  // widened to f32; waits

 private:
  const std::vector<ParameterSpec>& table_;
  CudaWeightBuffers buffers_;
  std::vector<size_t> norm_slots_;
  cudaStream_t stream_;
};

// The train state's device buffers (laid out by the model's plan).
struct CudaTrainBuffers {
  float* master = nullptr;  // bf16 mode without offload_optimizer
  float* grads = nullptr;
  float* adam_m = nullptr;  // without offload_optimizer
  float* adam_v = nullptr;
  double* grad_sum_of_squares = nullptr;
  float* clip_coefficient = nullptr;
};

class CudaTrainState final : public GradientSink {
 public:
  // Host bytes with offload_optimizer: the f32 master, the two moments and the copy buffers.
  static size_t offload_host_bytes(const ParameterGroup& group, Precision precision);
  CudaTrainState(const ParameterGroup& group, bool offload, CudaWeights& weights, CudaTrainBuffers buffers,
                 CudaBackend& backend, cudaStream_t stream);
  ~CudaTrainState() override;

  const ParameterGroup& group() const { return group_; }
  // Null for a parameter outside the group.
  float* grad(const ParameterSpec& p) override {
    return group_.contains(p) ? buffers_.grads + group_.offset(p) : nullptr;
  }
  void zero_grad();
  // The group's f32 gradients, one device buffer of group().numel() values in the group's layout.
  float* gradients() const { return buffers_.grads; }
  // The sum of the squared gradients (f64, copied back: the global norm of torch's
  // clip_grad_norm_ sums it over every trained group, and the host checks it is finite).
  double grad_sum_of_squares() const;
  // AdamW with the gradients clipped by the global norm sqrt(total_squares), on the device
  // (multi-tensor, the clipping coefficient computed there) or, offloaded, on the host; then the
  // weights from the new master. A non-null profile gets each part's time added.
  void step(const AdamWOptions& hp, double total_squares, StepProfile* profile = nullptr);
  long step() const { return step_; }
  OptimizerMoments moments() const;  // host copies when the moments live on the device

  void read_gradient(const ParameterSpec& p, float* host) const;
  void read_master(const ParameterSpec& p, float* host) const;
  // Offloaded: the host master of a parameter, which loading fills directly; else null.
  float* host_master(const ParameterSpec& p) const;
  void write_master(const ParameterSpec& p, const float* host);  // waits
  void publish();  // the weights from the master (after loading)

  void load_optimizer_state(const std::string& path);

 private:
  bool offloaded() const { return !host_master_.empty(); }
  float* device_master(const ParameterSpec& p) const;  // on the device (null when offloaded)
  void device_adamw(const AdamWOptions& hp);
  void offloaded_adamw(const AdamWOptions& hp, double norm, StepProfile* profile);
  void copy_norms_from_master();

  const ParameterGroup& group_;
  CudaWeights& weights_;
  CudaTrainBuffers buffers_;
  CudaBackend& backend_;
  cudaStream_t stream_;
  long step_ = 0;
  HostFloats host_master_, host_m_, host_v_;  // offload_optimizer
  std::unique_ptr<OffloadStaging> staging_;
  mutable std::vector<float> moment_copies_;  // moments(): both moments, downloaded
};

}  // namespace zn::model
