// The Mistral model resident on one GPU: the CPU model's contract (mistral.h: same config,
// options, parameter table, batch, optimizer and file formats, same methods and errors) with
// every buffer on the device. One cudaMalloc holds everything, laid out from the device plan
// like the CPU model's arena: the weights (cuda_state.h's CudaWeights), the training state
// (CudaTrainState: f32 master, gradients, AdamW moments), the batch, the activations and the
// kernels' workspaces (log-prob chunks, attention backward). Every kernel runs on one stream the model owns; the host sees only the
// batch going in, logp / logits and the grad-norm scalar coming out, and load / save.
//
// Two layouts keep the f32 master off the device, so that Mistral-7B trains on one 80 GB GPU:
// - a frozen bf16 model (the DPO reference) holds only the bf16 weights the kernels read and
//   the f32 norm weights (reading or saving its parameters widens the bf16 values);
// - with offload_optimizer, the f32 master and the AdamW moments live in host memory and the
//   step is the CPU model's AdamW kernel (kernels/cpu/adamw.h) over chunks of the gradient:
//   chunk i+1's gradients come down while chunk i is updated, then its new compute weights go
//   up. Mistral-7B in bf16: 13.5 GiB of weights and 27 GiB of gradients stay on the device,
//   81 GiB of master and moments move to the host, and a step moves 40.5 GiB over PCIe.
//
// Dtypes in bf16 mode (f32 mode, the test mode, stores everything in f32):
// - bf16: every GEMM operand (weights' copy, the norms' outputs, q/k/v, attention output,
//   gate/up/act) and their gradients that feed a GEMM or a bf16-only kernel (dq/dk/dv/dattn,
//   dgate/dup/dact): the tensor-core GEMMs and flash attention take bf16 and these are the
//   large activations, so bf16 halves the activation memory.
// - f32: the residual stream (layer inputs x_l and the mid-layer h) and its gradient dres. The
//   residual is a sum over every layer, and the GEMMs' epilogue adds into it in f32 (beta 1,
//   f32 C), as autocast training keeps it; rmsnorm reads f32 x and writes bf16 y, and its
//   backward writes dx in x's dtype (f32), which the residual gradient accumulates into. The
//   GEMMs read a bf16 rounding of dres (dres_bf16, as autocast's bf16 branch gradient).
// - f32 always: statistics (rstd, log-sum-exp), norm weights (an f32 copy beside the bf16
//   weights, as the CPU model keeps), dnorm (the sum of two or three GEMMs into the rmsnorm input gradient), every
//   parameter gradient, moments.
#pragma once
#include <cuda_runtime_api.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/cuda_backend.h"
#include "model/cuda_state.h"
#include "model/decoder.h"
#include "model/mistral.h"
#include "model/parameter_owners.h"
#include "parallel/nccl_collectives.h"

namespace zn::model {

struct CudaBuffers;

class CudaMistralModel {
 public:
  // Builds on the current device; throws zn::Error stating the plan when it does not fit.
  CudaMistralModel(const MistralConfig& config, const ModelOptions& options);
  ~CudaMistralModel();
  CudaMistralModel(const CudaMistralModel&) = delete;
  CudaMistralModel& operator=(const CudaMistralModel&) = delete;

  const MistralConfig& config() const { return config_; }
  const ModelOptions& options() const { return options_; }
  const MemoryPlan& memory_plan() const { return plan_; }
  // Device bytes by category, computable without a GPU. logits_chunks holds every workspace:
  // the log-prob chunks and the attention backward's rowsum buffer.
  static MemoryPlan plan(const MistralConfig& config, const ModelOptions& options);
  const std::vector<ParameterSpec>& parameters() const { return owners_.params; }
  const std::vector<ParameterSpec>& adapter_parameters() const { return owners_.adapter_parameters(); }
  // A base or adapter parameter by name; throws when unknown.
  const ParameterSpec& parameter(const std::string& name) const { return owners_.find(name); }
  void read_master(const ParameterSpec& p, float* out) const;      // numel floats, host
  void read_gradient(const ParameterSpec& p, float* out) const;    // throws when not trainable
  long optimizer_step() const;
  // The last clip_and_step's parts; null unless created with profile_steps and a step was taken.
  const StepProfile* step_profile() const { return profiled_ ? &profile_ : nullptr; }

  std::vector<std::string> load_weights(const std::vector<std::string>& files);
  AdapterLoad load_adapters(const std::vector<std::string>& files);  // as MistralModel's
  void set_adapters_enabled(bool enabled);
  // Folding adapters into the base is the CPU model's (zephyr-native merge): an error here.
  void merge_adapters();
  void save_weights(const std::string& path, const std::vector<std::string>& names, SaveDType dtype,
                    const std::map<std::string, std::string>& metadata) const;

  void forward(const TokenBatchView& batch, float* logp);
  void logprobs(const TokenBatchView& batch, float* logp);
  void next_token_logits(const TokenBatchView& batch, float* logits);
  void backward(const float* dlogp, long tokens);
  // forward() then backward() with the lm_head in one pass (cuda::logprob_forward_backward):
  // dlogp is known up front, so the backward does not recompute the logits.
  void forward_backward(const TokenBatchView& batch, const float* dlogp, float* logp);
  void zero_grad();
  // Data parallel (ZeRO stage 0): every trained group's f32 gradients summed across the
  // communicator's ranks, in place on the device, on the model's stream; waits. Called after the
  // last micro-batch's backward and before clip_and_step, so the clip, the norm and AdamW (on
  // the device, or the host's with offload_optimizer) all see the sum.
  void all_reduce_gradients(parallel::NcclCommunicator& communicator);
  double clip_and_step(const AdamWOptions& hp);
  // The same from the global sum of squared gradients given (ZeRO stage 2: the ranks' shard sums,
  // summed across them); a sharded model steps its range.
  double clip_and_step(const AdamWOptions& hp, double grad_sum_of_squares);

  // ZeRO (options.shard, zero_shard.h), as the CPU model's: each trained group's gradient
  // shard counts, the sum of squares of this rank's shard of the gradients, and the device
  // weight runs the ranks all-gather after a sharded step.
  std::vector<std::vector<size_t>> gradient_shard_counts() const;
  double shard_grad_sum_of_squares() const;
  std::vector<WeightSegment> weight_segments() const;
  // ZeRO stage 2: every trained group's gradients reduce-scattered over NCCL, in place: this
  // rank's range of the buffer then holds the ranks' sum (the rest keeps this rank's own
  // gradients, which nothing reads). Waits.
  void reduce_scatter_gradients(parallel::NcclCommunicator& communicator);
  // ZeRO stages 1 and 2, after clip_and_step: each range's new weights from its owner to every
  // rank over NCCL, in place on the device (weight_segments). Waits.
  void all_gather_weights(parallel::NcclCommunicator& communicator);

  void save_optimizer_state(const std::string& path) const;  // not sharded: one process's file
  void load_optimizer_state(const std::string& path);
  // ZeRO: this rank's shard file (optimizer_state.h: the CPU model's format), and the moments of
  // this rank's range from any set of optimizer state files (one process's file, or the shard
  // files of any rank count, written by either model).
  void save_optimizer_shard(const std::string& path) const;
  void load_optimizer_state(const std::vector<std::string>& paths);

  // Generation, as the CPU model's (mistral.h): the KvCache (in the activation dtype) and the
  // per-call arrays live in one device allocation of their own beside the arena.
  static size_t generation_bytes(const MistralConfig& config, const ModelOptions& options, int sequences,
                                 long max_context);
  void start_generation(int sequences, long max_context);
  int acquire_sequence();
  void release_sequence(int slot);
  void extend(const ExtendRequest& request, float* logits);

 private:
  void allocate();
  void use_device() const;
  void upload_batch(const TokenBatchView& batch);
  DeviceBatch batch() const;  // the last uploaded batch
  void download_logp(float* logp) const;
  void embedding_backward();  // from the decoder's d loss / d (embedding output), then sync
  std::vector<CudaTrainState*> train_states(const char* what) const;  // throws naming `what` when frozen
  void read_parameters(WeightFiles& files, const std::vector<ParameterSpec>& table);
  void read_parameter(WeightFiles& files, const ParameterSpec& p, const std::string& stored, std::vector<float>& staging);
  DType act_dtype() const;
  void download(const float* device, size_t count, float* host) const;
  void sync() const;
  // Logits of the token after each sequence's last row of the last forward, [n, vocab] (host).
  void last_row_logits(const int32_t* cu_seqlens, int n, float* logits);
  KvCache& cache(const char* what) const;  // throws naming `what` before start_generation
  void free_generation();
  double step_clipped(const AdamWOptions& hp, double grad_sum_of_squares, StepTimer& timer);
  // The communicator is on this model's GPU (else throws naming `what`).
  void check_communicator(const parallel::NcclCommunicator& communicator, const char* what) const;

  MistralConfig config_;
  ModelOptions options_;
  MemoryPlan plan_;
  StepProfile profile_;  // profile_steps: the last step's
  bool profiled_ = false;

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  void* arena_ = nullptr;  // the one device allocation
  std::unique_ptr<CudaBuffers> buf_;  // the arena's layout
  CudaBackend backend_;               // on stream_
  std::unique_ptr<Decoder> decoder_;
  using Owners = ParameterOwners<CudaWeights, CudaTrainState>;
  Owners owners_;  // the base and adapter tables, their weights and train states (after the arena)

  // Generation: the cache's device memory (cache, then the per-call arrays) and bookkeeping.
  void* generation_memory_ = nullptr;
  std::unique_ptr<KvCache> cache_;
  long max_context_ = 0;
  int32_t *cache_rows_ = nullptr, *k_begin_ = nullptr, *k_len_ = nullptr, *k_positions_ = nullptr;

  // The batch of the last forward() (host copies of what backward and next_token_logits need).
  std::vector<int32_t> cu_seqlens_;
  long tokens_ = 0;
  int n_docs_ = 0;
  bool have_activations_ = false;
};

}  // namespace zn::model
