// Mistral (MistralForCausalLM) on packed token streams, llm.c style, on the CPU: a parameter
// table (parameters.h) in Hugging Face names and layouts, the weights the kernels read apart from
// the training state (cpu_state.h: gradients, moments, the f32 master; none when frozen), an
// activation plan laid out once for a maximum token count, and the one decoder (decoder.h) on
// CpuBackend for forward and backward. The contract here (options, batch, memory plan, optimizer and file formats, errors)
// is the CUDA model's too (mistral_cuda.h).
//
// A decoder layer (HF MistralDecoderLayer, pre-norm):
//   h   = x + o_proj(attention(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rmsnorm1(x)
//   out = h + down_proj(silu(gate_proj(n2)) * up_proj(n2)),                       n2 = rmsnorm2(h)
// and the model: x0 = embed(ids); layers; logp[t] = log softmax(lm_head(rmsnorm(xL)))[target[t]].
// The per-token log-probs are the model's only output (never [tokens, vocab] logits); backward
// takes d loss / d logp per token from the trainer and accumulates parameter gradients.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/dtype.h"
#include "model/cpu_backend.h"
#include "model/cpu_state.h"
#include "model/decoder.h"
#include "model/generation.h"
#include "model/lora.h"
#include "model/optimizer_state.h"
#include "model/parameter_owners.h"
#include "model/parameters.h"
#include "model/step_profile.h"

namespace zn {
class SafetensorsFile;
}

namespace zn::model {

enum class Precision { F32, BF16 };

struct ModelOptions {
  Precision precision = Precision::F32;
  long max_tokens = 0;                  // the most tokens one forward may carry
  bool gradient_checkpointing = false;  // keep only each layer's input; recompute in backward
  bool trainable = true;                // false: no gradients, optimizer or saved activations
  // GPU model only (the CPU model holds everything in host memory already): the f32 master
  // weights and AdamW moments live in host memory and the AdamW step runs on the CPU, so the
  // device keeps only the weights the kernels read and the f32 gradients (ZeRO-Offload's split).
  bool offload_optimizer = false;
  // Parameters a trainable model keeps frozen (by name): they get no gradient, no optimizer
  // state and in bf16 no f32 master; the others are the trained parameter group (parameters.h).
  std::vector<std::string> frozen;
  // LoRA adapters on the projections (lora.h; rank 0: none), a trained group of their own when
  // the model is trainable. Freezing the base is the caller's choice (frozen), as PEFT's is.
  LoraConfig lora;
  // An untied embedding's gradient as a dense [vocab, dim] buffer instead of by rows
  // (row_gradient.h): data-parallel ranks sum whole gradient buffers across processes, and
  // each rank's micro-batches touch different rows.
  bool dense_embedding_gradient = false;
  // ZeRO (zero_shard.h): this process's rank among `shard.count` data-parallel ranks that shard
  // every trained group's optimizer state (AdamW moments, and the f32 master in bf16 mode) by
  // element ranges, on the CPU and GPU models alike (the GPU model's on the device, or on the host
  // with offload_optimizer); count 1: not sharded.
  ShardSpec shard;
  // Time each optimizer step's parts (step_profile.h; the bench's recipe steps ask for it); off,
  // a step reads no clock and records no event.
  bool profile_steps = false;
  // GPU model only: the CUDA device (ordinal) it lives on, e.g. a data-parallel rank's
  // LOCAL_RANK; -1: the constructing thread's current device.
  int cuda_device = -1;
};

inline bool frozen_bf16(const ModelOptions& o) { return o.precision == Precision::BF16 && !o.trainable; }

// Bytes the model will allocate, by category, computable before allocating anything.
struct MemoryPlan {
  size_t weights = 0;        // f32 master (+ bf16 copy); frozen bf16: bf16 weights + f32 norms
  size_t grads = 0;          // f32 gradients
  size_t optimizer = 0;      // AdamW moments (f32 m and v)
  size_t activations = 0;    // the activation arena (saved activations + backward scratch)
  size_t logits_chunks = 0;  // the fused log-prob kernel's working chunks, not held between calls
  // Host memory beside the model's device memory (GPU model with offload_optimizer: the f32
  // master, the moments and the pinned copy buffers); 0 for the CPU model, whose categories above
  // are all host memory.
  size_t host = 0;
  size_t total() const { return weights + grads + optimizer + activations + logits_chunks; }
};

MemoryPlan plan_memory(const MistralConfig& config, const ModelOptions& options);
// The CPU model's step buffers as one table (buffer_plan.h; the activation plan in mistral.cpp),
// with `buffers` pointing into base (null: the table only).
BufferPlan plan_activations(const MistralConfig& config, const ModelOptions& options, void* base,
                            DecoderBuffers& buffers);

// The words every memory-plan error uses: "weights .. + grads .. + optimizer .. + activations ..
// + workspaces .. (maxTokens N, dtype D, gradientCheckpointing on|off)".
std::string gib(size_t bytes);
std::string plan_breakdown(const MemoryPlan& plan, const ModelOptions& options);
// Refuses (zn::Error) when `needed` bytes exceed the host memory available now (core/memory.h),
// rather than letting the OOM killer end the process mid-run: "model: <what> needs <needed> of
// host memory, and <available> is available; try <advice>". No check where that is unknown.
void check_host_memory(size_t needed, const std::string& what, const std::string& advice);

// A packed micro-batch (lib/data/batch.ts TokenBatch): documents laid end to end.
struct TokenBatchView {
  long tokens = 0;
  const int32_t* input_ids = nullptr;
  const int32_t* position_ids = nullptr;
  const int32_t* targets = nullptr;  // next token, or -100 (no log-prob, no gradient)
  const int32_t* cu_seqlens = nullptr;
  int n_docs = 0;  // cu_seqlens holds n_docs + 1 offsets
};

// f64 like torch's Python-float hyperparameters (see kernels/cpu/adamw.h).
struct AdamWOptions {
  double lr = 0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;
  double max_grad_norm = 0;  // <= 0: no clipping
};

enum class SaveDType { F32, F16, BF16 };

// Checks both models share, so that the CPU and CUDA models refuse the same input with the same
// words. validate_batch: token count within maxTokens, cuSeqlens 0 first, increasing, the token
// count last, every id and target in the vocabulary (targets may be -100), positions >= 0.
void validate_batch(const MistralConfig& config, const ModelOptions& options, const TokenBatchView& batch);
// Every dlogp[t] finite.
void validate_dlogp(const float* dlogp, long tokens);
// lr >= 0, betas in [0, 1), eps >= 0.
void validate_adamw(const AdamWOptions& hp);
// The global gradient norm must be finite before a step is taken.
void check_grad_norm(double norm);

// The tensors of a model's safetensors files, by name, for both models' load_weights: a name in
// two files is an error naming both; read() converts one parameter to f32 and errors naming it
// when it is missing; unread() lists what the files hold beyond the parameters (e.g. a tied
// lm_head.weight).
class WeightFiles {
 public:
  explicit WeightFiles(const std::vector<std::string>& files);
  ~WeightFiles();
  void read(const ParameterSpec& p, float* out) { read(p, p.name, out); }
  // The tensor named `stored` (e.g. a saved module's PEFT name) as parameter p.
  void read(const ParameterSpec& p, const std::string& stored, float* out);
  bool has(const std::string& stored) const { return where_.count(stored) != 0; }
  std::vector<std::string> unread() const;

 private:
  std::vector<std::string> files_;
  std::vector<std::unique_ptr<SafetensorsFile>> opened_;
  std::map<std::string, const SafetensorsFile*> where_;
};


// What load_adapters read: the names of tensors in the files that are not the model's adapters
// or saved modules, and the saved modules (base names) the files do not hold, which keep their
// values (a fresh adapter's start from the base, as PEFT's copies do).
struct AdapterLoad {
  std::vector<std::string> unexpected;
  std::vector<std::string> absent;
};

class RowGradient;

class MistralModel {
 public:
  MistralModel(const MistralConfig& config, const ModelOptions& options);
  ~MistralModel();
  MistralModel(const MistralModel&) = delete;
  MistralModel& operator=(const MistralModel&) = delete;

  const MistralConfig& config() const { return config_; }
  const ModelOptions& options() const { return options_; }
  const MemoryPlan& memory_plan() const { return plan_; }
  // What a model of this config and options would allocate (plan_memory), before building one.
  static MemoryPlan plan(const MistralConfig& config, const ModelOptions& options);
  const std::vector<ParameterSpec>& parameters() const { return owners_.params; }
  // The LoRA adapters' table (empty without adapters), named as PEFT saves them.
  const std::vector<ParameterSpec>& adapter_parameters() const { return owners_.adapter_parameters(); }
  // A base or adapter parameter by name; throws when unknown.
  const ParameterSpec& parameter(const std::string& name) const { return owners_.find(name); }
  // The f32 master values (not held by a frozen bf16 model: read_master widens its bf16 values).
  const float* master(const ParameterSpec& p) const;
  // Copies of one parameter's f32 master values / gradient (numel floats), the accessors the
  // CUDA model shares (its buffers live on the device).
  void read_master(const ParameterSpec& p, float* out) const;
  void read_gradient(const ParameterSpec& p, float* out) const;  // throws when not trainable
  long optimizer_step() const;
  // The last clip_and_step's parts; null unless created with profile_steps and a step was taken.
  const StepProfile* step_profile() const { return profiled_ ? &profile_ : nullptr; }
  // Each trained group's dense f32 gradient buffer (the base group's when it trains anything,
  // then the adapters'), for summing across data-parallel ranks in place. Refused while an
  // untied embedding's gradient is held by rows (dense_embedding_gradient gives a dense one).
  struct GradientBuffer {
    float* data;
    size_t size;
  };
  std::vector<GradientBuffer> gradient_buffers() const;
  // ZeRO: each gradient buffer's per-rank element counts (stage 2's reduce-scatter), the sum of
  // squares of this rank's shard of the gradients, and the weight runs the ranks all-gather in
  // place after a sharded step (each trained group's, in gradient_buffers' order).
  std::vector<std::vector<size_t>> gradient_shard_counts() const;
  double shard_grad_sum_of_squares() const;
  std::vector<WeightSegment> weight_segments() const;

  // Reads every parameter from safetensors files (any of F32/F16/BF16). Returns the names of
  // tensors in the files that are not parameters (e.g. a tied lm_head.weight); a missing
  // parameter is an error naming it.
  std::vector<std::string> load_weights(const std::vector<std::string>& files);
  // Reads every adapter parameter from safetensors files (PEFT's adapter_model.safetensors
  // names; a missing one is an error naming it) and the saved modules the files hold (under
  // PEFT's names, peft_saved_name).
  AdapterLoad load_adapters(const std::vector<std::string>& files);
  // With the adapters off, every call runs the base model alone (a fresh adapter's reference).
  void set_adapters_enabled(bool enabled);
  // Folds the adapters into the base, W += s B A (PEFT's merge_and_unload), in f32 (dtype f32
  // only), and switches them off: the base alone is then the merged model.
  void merge_adapters();
  // Writes one safetensors file (atomically) holding the named parameters (base or adapter) in the given order,
  // narrowed from the f32 master while writing. The caller plans the shards (lib/model/folder.ts).
  void save_weights(const std::string& path, const std::vector<std::string>& names, SaveDType dtype,
                    const std::map<std::string, std::string>& metadata) const;

  // Forward keeping activations for backward; logp[t] for each token (0 where target is -100).
  void forward(const TokenBatchView& batch, float* logp);
  // Forward without keeping anything for backward (scoring, reference log-probs).
  void logprobs(const TokenBatchView& batch, float* logp);
  // Logits of the token after each document's last position, [n_docs, vocab] (greedy decoding:
  // only n_docs rows of logits ever exist).
  void next_token_logits(const TokenBatchView& batch, float* logits);
  // dlogp[t] = d loss / d logp[t] for the `tokens` tokens of the last forward(); gradients
  // accumulate.
  void backward(const float* dlogp, long tokens);
  // forward() then backward(dlogp) for a loss whose dlogp is known before the forward (SFT's
  // token mean): the lm_head's logits are computed once (cpu::logprob_forward_backward) instead
  // of again in backward. dlogp and logp have batch.tokens entries; gradients accumulate.
  void forward_backward(const TokenBatchView& batch, const float* dlogp, float* logp);
  void zero_grad();
  // Global L2 norm of the gradients, clipping as torch clip_grad_norm_, then one AdamW step.
  // Returns the norm before clipping (what HF logs as grad_norm).
  double clip_and_step(const AdamWOptions& hp);
  // The same from the global sum of squared gradients given (ZeRO stage 2: the ranks' shard sums,
  // summed across them); a sharded model steps its range.
  double clip_and_step(const AdamWOptions& hp, double grad_sum_of_squares);

  // AdamW moments and step count, for checkpoints (one safetensors file, atomic write).
  void save_optimizer_state(const std::string& path) const;
  void load_optimizer_state(const std::string& path);
  // ZeRO: this rank's shard file (optimizer_state.h), and the moments of this rank's range from
  // any set of optimizer state files (one process's file, or the shard files of any rank count).
  void save_optimizer_shard(const std::string& path) const;
  void load_optimizer_state(const std::vector<std::string>& paths);

  // Generation (generation.h): a KvCache of `sequences` slots for up to max_context positions
  // each, in host memory beside the model's buffers (replacing an earlier one); sequences take a
  // slot, extend() runs their new tokens and gives each one's next-token logits
  // [sequences, vocab] f32, and a finished sequence releases its slot.
  static size_t generation_bytes(const MistralConfig& config, const ModelOptions& options, int sequences,
                                 long max_context);
  void start_generation(int sequences, long max_context);
  int acquire_sequence();  // -1 when every slot is taken
  void release_sequence(int slot);
  void extend(const ExtendRequest& request, float* logits);

 private:
  void copy_batch(const TokenBatchView& batch);
  DeviceBatch batch() const;  // the last copied batch, as the kernels read it
  // The train states (the base group's when it trains anything, the adapters'); throws naming
  // `what` on a model created with trainable: false.
  std::vector<CpuTrainState*> train_states(const char* what) const;
  // clip_and_step's clipping and AdamW step from the global sum of squares, timing into profile_.
  double step_clipped(const AdamWOptions& hp, double grad_sum_of_squares, StepTimer& timer);
  void read_parameters(WeightFiles& files, const std::vector<ParameterSpec>& table);
  void read_parameter(WeightFiles& files, const ParameterSpec& p, const std::string& stored, std::vector<float>& staging);
  // A parameter's f32 values: the master, or a frozen model's f32 weights or norm weights; null
  // for a frozen bf16 model's matrices (bf16 only).
  const float* f32_values(const ParameterSpec& p) const;
  // The logits of the token after each sequence's last row of the last forward, [n, vocab].
  void last_row_logits(const int32_t* cu_seqlens, int n, float* logits) const;
  KvCache& cache(const char* what) const;  // throws naming `what` before start_generation

  MistralConfig config_;
  ModelOptions options_;
  MemoryPlan plan_;
  StepProfile profile_;  // profile_steps: the last step's
  bool profiled_ = false;
  using Owners = ParameterOwners<CpuWeights, CpuTrainState>;
  Owners owners_;  // the base and adapter tables, their weights and train states

  // calloc'd, not a std::vector: its pages are committed when first written, so the arena adds
  // nothing to the peak while weights load (a tensor's file pages are resident then).
  struct FreeDeleter {
    void operator()(float* p) const;
  };
  std::unique_ptr<float[], FreeDeleter> arena_;
  std::unique_ptr<BufferPlan> buffer_plan_;  // the step's buffer table, planned in arena_
  std::unique_ptr<DecoderBuffers> buffers_;  // laid out in arena_
  CpuBackend backend_;
  std::unique_ptr<Decoder> decoder_;

  // Generation's cache and its memory.
  std::vector<float> cache_memory_;
  std::unique_ptr<KvCache> cache_;
  long max_context_ = 0;

  // The batch of the last forward(), kept for backward().
  std::vector<int32_t> input_ids_, position_ids_, targets_, cu_seqlens_;
  long tokens_ = 0;
  int n_docs_ = 0;
  bool have_activations_ = false;
};

}  // namespace zn::model
