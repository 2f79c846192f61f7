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
//   Sharded (ZeRO, zero_shard.h: the CPU model's ranges, so shard files interchange), it holds
//   the moments and in bf16 mode the master of its element range of the group only (on the
//   device, or on the host with offload_optimizer, where only that range's gradients come down
//   and its new weights go up), steps that range with the same AdamW kernels, and names the
//   weight runs the ranks then all-gather (weight_segments). The gradient buffer stays whole on
//   the device: the backward accumulates every micro-batch into it.
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
#include "model/zero_shard.h"

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
  // Elements [range.begin, range.end) of a parameter the same way, host[0] being element range.begin.
  void assign_range(const ParameterSpec& p, ElementRange range, const float* host);
  void read(const ParameterSpec& p, float* host) const;  // widened to f32; waits

 private:
  const std::vector<ParameterSpec>& table_;
  CudaWeightBuffers buffers_;
  std::vector<size_t> norm_slots_;
  cudaStream_t stream_;
};

// The train state's device buffers (laid out by the model's plan).
// master and the moments hold the shard's range only when sharded.
struct CudaTrainBuffers {
  float* master = nullptr;  // bf16 mode without offload_optimizer
  float* grads = nullptr;   // always the whole group
  float* adam_m = nullptr;  // without offload_optimizer
  float* adam_v = nullptr;
  double* grad_sum_of_squares = nullptr;
  float* clip_coefficient = nullptr;
};

class CudaTrainState final : public GradientSink {
 public:
  // Host bytes with offload_optimizer: the f32 master, the two moments (of the shard's range when
  // sharded) and the copy buffers.
  static size_t offload_host_bytes(const ParameterGroup& group, Precision precision, ShardSpec shard = {});
  CudaTrainState(const ParameterGroup& group, bool offload, CudaWeights& weights, CudaTrainBuffers buffers,
                 CudaBackend& backend, cudaStream_t stream, ShardSpec shard = {});
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
  // shard_only: over this rank's range alone (ZeRO stage 2, whose ranks hold only their range's
  // summed gradient).
  double grad_sum_of_squares(bool shard_only = false) const;
  // AdamW with the gradients clipped by the global norm sqrt(total_squares), on the device
  // (multi-tensor, the clipping coefficient computed there) or, offloaded, on the host; then the
  // weights from the new master. A non-null profile gets each part's time added. Sharded: this
  // rank's range only.
  void step(const AdamWOptions& hp, double total_squares, StepProfile* profile = nullptr);
  long step() const { return step_; }
  OptimizerMoments moments() const;  // host copies when the moments live on the device; not sharded
  // This rank's slices (host copies; with_master: bf16 mode's master too), for its shard file.
  OptimizerShard shard_moments(bool with_master = true) const;

  void read_gradient(const ParameterSpec& p, float* host) const;
  // The f32 master; sharded where the master is not whole here (bf16, or offloaded), the
  // weights' values (the rounding in bf16 mode, as the CPU model's; the shard files carry the master).
  void read_master(const ParameterSpec& p, float* host) const;
  // Offloaded and not sharded: the host master of a parameter, which loading fills directly; else null.
  float* host_master(const ParameterSpec& p) const;
  // Loading: the parameter's whole f32 values into the master (sharded: its owned part, and the
  // whole values into the weights). Waits.
  void write_master(const ParameterSpec& p, const float* host);
  void publish();  // the weights from the master (after loading; sharded: the owned part)

  bool sharded() const { return spec_.count > 1; }
  ElementRange shard() const { return shard_; }  // of the group's layout ([0, numel) when not sharded)
  // The runs of the device weights the ranks all-gather after a sharded step.
  std::vector<WeightSegment> weight_segments() const;
  // The gradient buffer's per-rank counts (the reduce-scatter of ZeRO stage 2).
  std::vector<size_t> gradient_shard_counts() const { return shard_counts(group_.numel(), spec_.count, {0, group_.numel()}); }

  // The moments (and masters the files hold) of this rank's range from optimizer state files:
  // one process's file, or every rank's shard files of a checkpoint, of any number of ranks.
  void load_optimizer_state(const std::vector<const SafetensorsFile*>& files);

 private:
  bool offloaded() const { return offload_; }
  // The master keeps every element of the group here (not sharded, or f32 on the device, where
  // the master is the weights).
  bool whole_master() const { return !sharded() || (!offloaded() && !weights_.is_bf16()); }
  // The part of a member this rank owns, in the member's own element numbering (may be empty).
  ElementRange owned(const ParameterSpec& p) const { return owned_part(group_, shard_, p); }
  // Element `at` (owned) of a member's master: on the device (f32 mode: the weights), or offloaded on the host.
  float* master_at(const ParameterSpec& p, size_t at) const;
  size_t moment_index(const ParameterSpec& p, size_t at) const { return group_.offset(p) + at - shard_.begin; }
  void device_adamw(const AdamWOptions& hp);
  void offloaded_adamw(const AdamWOptions& hp, double norm, StepProfile* profile);
  void copy_norms_from_master();

  const ParameterGroup& group_;
  CudaWeights& weights_;
  CudaTrainBuffers buffers_;
  CudaBackend& backend_;
  cudaStream_t stream_;
  bool offload_;
  ShardSpec spec_;
  ElementRange shard_;  // of the group's layout (may be empty: a small group on many ranks)
  long step_ = 0;
  HostFloats host_master_, host_m_, host_v_;  // offload_optimizer: the shard's range
  std::unique_ptr<OffloadStaging> staging_;
  mutable std::vector<float> moment_copies_;  // moments(), shard_moments(): downloaded
};

}  // namespace zn::model
