// The Mistral model on the GPU (residency and dtypes: mistral_cuda.h): the one decoder
// (decoder.h) on CudaBackend, the model's one stream, over one device arena laid out from the
// plan; weights, gradients, the optimizer step and files are this file's.
#include "model/mistral_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/bf16.h"
#include "core/errors.h"
#include "core/thread_pool.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cuda/adamw.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/logprob.h"
#include "model/safetensors.h"

namespace zn::model {

// ---------------------------------------------------------------------------------------------
// The arena: every device buffer of the model, laid out once for max_tokens.

struct CudaBuffers {
  // Parameters (offsets of the parameter table apply to each).
  float* master;       // f32 mode, or a trainable bf16 model without offload_optimizer
  bf16* weights_bf16;  // bf16 mode only
  float* norms;        // without master: the norm weights in f32, at the model's norm_slots_
  float* grads;        // trainable only, one contiguous buffer (the grad norm reads it at once)
  float *adam_m, *adam_v;  // trainable without offload_optimizer
  // The batch of the last call, and the per-token values crossing to and from the host.
  int32_t *input_ids, *position_ids, *targets, *cu_seqlens;
  float *logp, *dlogp;
  // The decoder's activations, every layer's kept (each slot's own norm1, h, norm2 and act) and
  // its workspaces: head holds the log-prob chunks (also next_token_logits' logits chunks).
  DecoderBuffers acts;
  double* grad_sum_of_squares;
  float* clip_coefficient;
};

void HostFloats::allocate(size_t count, const char* what) {
  memory_ = HugePageMemory(count * sizeof(float));
  ZN_CHECK(!empty() || count == 0, "model: cannot allocate ", count * sizeof(float),
           " bytes of host memory for the offloaded ", what);
}

// Page-locked host memory: what cudaMemcpyAsync copies from and to without blocking the host.
class PinnedBuffer {
 public:
  explicit PinnedBuffer(size_t bytes) { ZN_CUDA_CHECK(cudaMallocHost(&data_, bytes)); }
  ~PinnedBuffer() { cudaFreeHost(data_); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
};

// A CUDA event, owned (used here to wait for one copy, not for timing).
class Event {
 public:
  Event() { ZN_CUDA_CHECK(cudaEventCreate(&event_)); }
  ~Event() { cudaEventDestroy(event_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

// offload_optimizer's copy buffers, two of each kind, used by alternate chunks: while the host
// steps chunk i, chunk i+1's gradients come down and chunk i-1's new compute weights go up.
// grads_arrived[i % 2] marks the end of chunk i's gradient copy.
struct OffloadStaging {
  size_t chunk;  // elements
  PinnedBuffer grads0, grads1, weights0, weights1;
  Event grads_arrived[2];
  OffloadStaging(size_t chunk_elements, size_t weight_bytes)
      : chunk(chunk_elements),
        grads0(chunk * sizeof(float)),
        grads1(chunk * sizeof(float)),
        weights0(chunk * weight_bytes),
        weights1(chunk * weight_bytes) {}
  float* grads(size_t round) const { return static_cast<float*>((round % 2 ? grads1 : grads0).data()); }
  void* weights(size_t round) const { return (round % 2 ? weights1 : weights0).data(); }
};

namespace {

constexpr size_t kAlignment = 256;  // vector loads, cuBLASLt's preferred alignment, flash's 16 B

// Hands out aligned pieces of an arena; with a null base it only counts.
class DeviceArena {
 public:
  explicit DeviceArena(char* base) : base_(base) {}
  template <typename T>
  T* take(size_t count) {
    return static_cast<T*>(take_bytes(count * sizeof(T)));
  }
  void* take_bytes(size_t bytes) {
    void* p = base_ ? base_ + used_ : nullptr;
    used_ += (bytes + kAlignment - 1) / kAlignment * kAlignment;
    return p;
  }
  size_t used() const { return used_; }

 private:
  char* base_;
  size_t used_ = 0;
};

DType activation_dtype(const ModelOptions& o) { return o.precision == Precision::BF16 ? DType::BF16 : DType::F32; }

bool offloads(const ModelOptions& o) { return o.trainable && o.offload_optimizer; }

// Whether the device holds the f32 master: always in f32 mode (it is what the kernels read);
// in bf16 mode only for a trainable model that steps on the device.
bool device_master(const ModelOptions& o) { return o.precision == Precision::F32 || (o.trainable && !offloads(o)); }

// offload_optimizer moves the gradient down and the compute weights up in chunks of this many
// elements (64 MiB of f32), through two pinned gradient buffers and one pinned weight buffer.
// ZN_OFFLOAD_CHUNK (elements) overrides it: the device check uses an odd size so that chunks
// split parameters, and it is a knob for tuning the copy pipeline on a device.
constexpr size_t kOffloadChunk = size_t(1) << 24;

size_t offload_chunk(size_t params) {
  size_t chunk = kOffloadChunk;
  if (const char* text = std::getenv("ZN_OFFLOAD_CHUNK")) {
    char* end = nullptr;
    const unsigned long long value = std::strtoull(text, &end, 10);
    ZN_CHECK(*text && *end == 0 && value > 0, "ZN_OFFLOAD_CHUNK must be a positive element count, got '", text, "'");
    chunk = size_t(value);
  }
  return std::min(params, chunk);
}

size_t offload_staging_bytes(size_t params, const ModelOptions& o) {
  return 2 * offload_chunk(params) * (sizeof(float) + dtype_size(activation_dtype(o)));
}

cuda::LogprobShape logprob_shape(const MistralConfig& c, long tokens) { return {tokens, c.hidden_size, c.vocab_size}; }

cuda::AttentionShape attention_shape(const MistralConfig& c, long tokens) {
  return {tokens, c.num_heads, c.num_kv_heads, c.head_dim, c.sliding_window, 1.0f / std::sqrt(float(c.head_dim))};
}

// Sizes of one layout: tokens N and the model's widths.
struct Widths {
  size_t N, d, qd, kvd, ffn, heads, act;  // act: bytes of an activation element
  Widths(const MistralConfig& c, const ModelOptions& o)
      : N(size_t(o.max_tokens)), d(size_t(c.hidden_size)), qd(size_t(c.q_dim())), kvd(size_t(c.kv_dim())),
        ffn(size_t(c.intermediate_size)), heads(size_t(c.num_heads)), act(dtype_size(activation_dtype(o))) {}
};

LayerSlot take_layer_slot(const Widths& w, DType t, DeviceArena& arena) {
  auto act = [&](size_t count) { return Tensor{arena.take_bytes(count * w.act), t}; };
  LayerSlot s;
  s.norm1 = act(w.N * w.d);
  s.rstd1 = arena.take<float>(w.N);
  s.q = act(w.N * w.qd);
  s.k = act(w.N * w.kvd);
  s.v = act(w.N * w.kvd);
  s.attn = act(w.N * w.qd);
  s.lse = arena.take<float>(w.heads * w.N);
  s.h = arena.take<float>(w.N * w.d);
  s.norm2 = act(w.N * w.d);
  s.rstd2 = arena.take<float>(w.N);
  s.gate = act(w.N * w.ffn);
  s.up = act(w.N * w.ffn);
  s.act = act(w.N * w.ffn);
  return s;
}

// The backward's scratch: one set for all layers (each slot's dgate, dup, dq, dk, dv point here).
void take_backward_scratch(const Widths& w, DType t, DeviceArena& arena, DecoderBuffers& b) {
  auto act = [&](size_t count) { return Tensor{arena.take_bytes(count * w.act), t}; };
  b.dres = arena.take<float>(w.N * w.d);
  b.dnorm = arena.take<float>(w.N * w.d);
  b.dnorm_x = arena.take<float>(w.N * w.d);
  b.dres_operand = t == DType::BF16 ? act(w.N * w.d) : f32(b.dres);
  b.dattn = act(w.N * w.qd);
  const Tensor dq = act(w.N * w.qd), dk = act(w.N * w.kvd), dv = act(w.N * w.kvd);
  b.dact = act(w.N * w.ffn);
  const Tensor dgate = act(w.N * w.ffn), dup = act(w.N * w.ffn);
  for (LayerSlot& s : b.layers) {
    s.dq = dq;
    s.dk = dk;
    s.dv = dv;
    s.dgate = dgate;
    s.dup = dup;
  }
}

// The batch, the per-token values crossing to the host, and the activations (as the CPU
// model's layout_activations).
void take_activations(const MistralConfig& c, const ModelOptions& o, DeviceArena& arena, CudaBuffers& b) {
  const Widths w(c, o);
  const DType t = activation_dtype(o);
  DecoderBuffers& a = b.acts;
  b.input_ids = arena.take<int32_t>(w.N);
  b.position_ids = arena.take<int32_t>(w.N);
  b.targets = arena.take<int32_t>(w.N);
  b.cu_seqlens = arena.take<int32_t>(w.N + 1);
  b.logp = arena.take<float>(w.N);
  b.dlogp = o.trainable ? arena.take<float>(w.N) : nullptr;
  a.residual.resize(o.trainable ? size_t(c.num_layers) + 1 : 2);
  for (float*& x : a.residual) x = arena.take<float>(w.N * w.d);
  a.layers.resize(o.trainable && !o.gradient_checkpointing ? size_t(c.num_layers) : 1);
  for (LayerSlot& slot : a.layers) slot = take_layer_slot(w, t, arena);
  a.final_norm = {arena.take_bytes(w.N * w.d * w.act), t};
  a.final_rstd = arena.take<float>(w.N);
  a.logit_lse = arena.take<float>(w.N);
  if (o.trainable) take_backward_scratch(w, t, arena, a);
}

// Lays the arena out for max_tokens (walked once to plan, once to allocate, so the two cannot
// disagree); returns the bytes of each category.
MemoryPlan layout(const MistralConfig& c, const ModelOptions& o, char* base, CudaBuffers& b) {
  const std::vector<ParameterSpec> table = parameter_table(c);
  const size_t params = parameter_count(table);
  DeviceArena arena(base);
  MemoryPlan plan;
  size_t mark = 0;
  auto close_section = [&](size_t& bytes) {
    bytes = arena.used() - mark;
    mark = arena.used();
  };
  const bool moments_here = o.trainable && !offloads(o);
  b.master = device_master(o) ? arena.take<float>(params) : nullptr;
  b.weights_bf16 = o.precision == Precision::BF16 ? arena.take<bf16>(params) : nullptr;
  b.norms = device_master(o) ? nullptr : arena.take<float>(norm_slots(table, nullptr));
  close_section(plan.weights);
  b.grads = o.trainable ? arena.take<float>(params) : nullptr;
  close_section(plan.grads);
  b.adam_m = moments_here ? arena.take<float>(params) : nullptr;
  b.adam_v = moments_here ? arena.take<float>(params) : nullptr;
  close_section(plan.optimizer);
  take_activations(c, o, arena, b);
  close_section(plan.activations);
  const size_t head_bytes = cuda::logprob_workspace_bytes(logprob_shape(c, o.max_tokens));
  b.acts.head = {arena.take_bytes(head_bytes), head_bytes};
  const size_t attention_bytes =
      o.trainable ? cuda::attention_backward_workspace_bytes(attention_shape(c, o.max_tokens)) : 0;
  b.acts.attention_backward = {o.trainable ? arena.take_bytes(attention_bytes) : nullptr, attention_bytes};
  b.grad_sum_of_squares = arena.take<double>(1);
  b.clip_coefficient = arena.take<float>(1);
  close_section(plan.logits_chunks);
  // The f32 master and the two moments, and the pinned buffers of the step's copies.
  plan.host = offloads(o) ? params * 3 * sizeof(float) + offload_staging_bytes(params, o) : 0;
  return plan;
}

// What the CUDA libraries allocate beside the arena (cuBLASLt's 32 MiB workspace and handle,
// the id-check scratch): kept free so that the first GEMM does not run out.
constexpr size_t kLibraryReserve = size_t(256) << 20;

[[noreturn]] void fail_memory_plan(const MistralConfig& c, const ModelOptions& o, const MemoryPlan& plan,
                                   const cuda::DeviceInfo& device, const char* why) {
  std::string advice;
  if (!o.gradient_checkpointing && o.trainable) {
    ModelOptions checkpointed = o;
    checkpointed.gradient_checkpointing = true;
    advice += "gradientCheckpointing: true (activations " +
              gib(CudaMistralModel::plan(c, checkpointed).activations) + "), ";
  }
  if (o.trainable && !o.offload_optimizer) {
    ModelOptions offloaded = o;
    offloaded.offload_optimizer = true;
    const MemoryPlan moved = CudaMistralModel::plan(c, offloaded);
    advice += "offloadOptimizer: true (the f32 master and moments to host memory: device " +
              gib(moved.total()) + ", host " + gib(moved.host) + "), ";
  }
  advice += "a smaller maxTokens (activations and workspaces scale with it)";
  if (o.precision == Precision::F32) advice += ", dtype bf16";
  fail("model: the memory plan does not fit on GPU ", device.index, " (", device.name, ")", why,
       ": it needs ", gib(plan.total()), " = ", plan_breakdown(plan, o), " plus about ", gib(kLibraryReserve),
       " for the CUDA libraries, and the device has ", gib(device.free_memory), " free of ",
       gib(device.total_memory), "; try ", advice);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Construction

MemoryPlan CudaMistralModel::plan(const MistralConfig& config, const ModelOptions& options) {
  config.validate();
  ZN_CHECK(options.max_tokens > 0, "model: maxTokens must be positive, got ", options.max_tokens);
  CudaBuffers counting{};
  return layout(config, options, nullptr, counting);
}

CudaMistralModel::CudaMistralModel(const MistralConfig& config, const ModelOptions& options)
    : config_(config), options_(options) {
  plan_ = plan(config_, options_);
  params_ = parameter_table(config_);
  index_ = index_parameters(config_, params_);
  norm_slots(params_, &norm_slots_);
  cuda::device_count();  // a readable error when there is no GPU or driver
  ZN_CUDA_CHECK(cudaGetDevice(&device_));
  if (offloads(options_)) {
    check_host_memory(plan_.host, "offloadOptimizer (the f32 master, the AdamW moments and the copy buffers)",
                      "a machine with more host memory, or offloadOptimizer: false where the device holds them");
  }
  try {
    ZN_CUDA_CHECK(cudaStreamCreate(&stream_));
    backend_.set_stream(stream_);
    allocate();
    if (offloads(options_)) {
      const size_t n = parameter_count(params_);
      host_master_.allocate(n, "master weights");
      host_m_.allocate(n, "first moments");
      host_v_.allocate(n, "second moments");
      staging_ = std::make_unique<OffloadStaging>(offload_chunk(n), dtype_size(act_dtype()));
    }
  } catch (...) {
    if (arena_) cudaFree(arena_);
    if (stream_) cudaStreamDestroy(stream_);
    throw;
  }
}

CudaMistralModel::~CudaMistralModel() {
  cudaSetDevice(device_);
  if (stream_) cudaStreamSynchronize(stream_);
  if (arena_) cudaFree(arena_);
  if (stream_) cudaStreamDestroy(stream_);
}

// Checks the plan against the device's free memory, then makes the one allocation (zeroed: the
// CPU model starts from zero weights, gradients and moments too).
void CudaMistralModel::allocate() {
  const cuda::DeviceInfo device = cuda::device_info(device_);
  if (plan_.total() + kLibraryReserve > device.free_memory) fail_memory_plan(config_, options_, plan_, device, "");
  const cudaError_t status = cudaMalloc(&arena_, plan_.total());
  if (status != cudaSuccess) {
    arena_ = nullptr;
    cudaGetLastError();  // clear it, so later calls report their own
    if (status == cudaErrorMemoryAllocation)
      fail_memory_plan(config_, options_, plan_, device, " (cudaMalloc failed)");
    ZN_CUDA_CHECK(status);
  }
  buf_ = std::make_unique<CudaBuffers>();
  layout(config_, options_, static_cast<char*>(arena_), *buf_);
  // The GPU keeps every activation (Recompute: nothing), in bf16 where a GEMM reads it.
  decoder_ = std::make_unique<Decoder>(config_, index_, backend_, Recompute{});
  ZN_CUDA_CHECK(cudaMemsetAsync(arena_, 0, plan_.total(), stream_));
  sync();
}

void CudaMistralModel::use_device() const { ZN_CUDA_CHECK(cudaSetDevice(device_)); }

void CudaMistralModel::sync() const { ZN_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void CudaMistralModel::download(const float* device, size_t count, float* host) const {
  ZN_CUDA_CHECK(cudaMemcpyAsync(host, device, count * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  sync();
}

void CudaMistralModel::upload(const float* host, size_t count, float* device) {
  ZN_CUDA_CHECK(cudaMemcpyAsync(device, host, count * sizeof(float), cudaMemcpyHostToDevice, stream_));
  sync();
}

const ParameterSpec& CudaMistralModel::parameter(const std::string& name) const {
  return find_parameter(params_, name);
}

size_t CudaMistralModel::norm_slot(const ParameterSpec& p) const {
  return norm_slots_[size_t(&p - params_.data())];
}

// The f32 master where one exists (host, or device); else the device's f32 norm weights or the
// bf16 weights widened.
void CudaMistralModel::read_master(const ParameterSpec& p, float* out) const {
  if (offloaded()) {
    std::memcpy(out, host_master_.data() + p.offset, p.numel * sizeof(float));
    return;
  }
  use_device();
  if (buf_->master) return download(buf_->master + p.offset, p.numel, out);
  if (norm_slot(p) != kNoSlot) return download(buf_->norms + norm_slot(p), p.numel, out);
  std::vector<bf16> values(p.numel);
  ZN_CUDA_CHECK(cudaMemcpyAsync(values.data(), buf_->weights_bf16 + p.offset, p.numel * sizeof(bf16),
                                cudaMemcpyDeviceToHost, stream_));
  sync();
  for (size_t i = 0; i < p.numel; ++i) out[i] = bf16_to_f32(values[i]);
}

void CudaMistralModel::read_gradient(const ParameterSpec& p, float* out) const {
  ZN_CHECK(options_.trainable, "model: gradients exist only for a trainable model");
  use_device();
  download(buf_->grads + p.offset, p.numel, out);
}

DType CudaMistralModel::act_dtype() const { return activation_dtype(options_); }

// Matmul operand: the bf16 copy in bf16 mode, else the f32 master.
ConstTensor CudaMistralModel::weight(const ParameterSpec& p) const {
  if (options_.precision == Precision::BF16) return {buf_->weights_bf16 + p.offset, DType::BF16};
  return {buf_->master + p.offset, DType::F32};
}

// Norm weights: f32 in both modes, as the CPU model (the master, or the compact copy without one).
const float* CudaMistralModel::norm_weight(const ParameterSpec& p) const {
  if (buf_->master) return buf_->master + p.offset;
  return buf_->norms + norm_slot(p);
}

float* CudaMistralModel::grad(const ParameterSpec& p) { return buf_->grads + p.offset; }

// After the device master changed: its bf16 rounding for the kernels (bf16 mode).
void CudaMistralModel::refresh_bf16() {
  if (options_.precision == Precision::BF16 && buf_->master)
    backend_.round(long(parameter_count(params_)), buf_->master, {buf_->weights_bf16, DType::BF16});
}

// One parameter's new f32 values (host) to the device: into the device master, or, without
// one, rounded to bf16 on the host (round to nearest even, as the device's rounding) and, for a
// norm weight, also in f32.
void CudaMistralModel::upload_parameter(const ParameterSpec& p, const float* values) {
  if (buf_->master) return upload(values, p.numel, buf_->master + p.offset);
  std::vector<bf16> rounded(p.numel);
  parallel_for(p.numel, size_t(1) << 16, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) rounded[i] = f32_to_bf16(values[i]);
  });
  ZN_CUDA_CHECK(cudaMemcpyAsync(buf_->weights_bf16 + p.offset, rounded.data(), p.numel * sizeof(bf16),
                                cudaMemcpyHostToDevice, stream_));
  sync();
  if (norm_slot(p) != kNoSlot) upload(values, p.numel, buf_->norms + norm_slot(p));
}

void CudaMistralModel::upload_norms_from_host() {
  for (const ParameterSpec& p : params_)
    if (norm_slot(p) != kNoSlot) upload(host_master_.data() + p.offset, p.numel, buf_->norms + norm_slot(p));
}

// ---------------------------------------------------------------------------------------------
// Weights and optimizer state in and out (through host staging buffers)

std::vector<std::string> CudaMistralModel::load_weights(const std::vector<std::string>& files) {
  use_device();
  WeightFiles weights(files);
  have_activations_ = false;
  std::vector<float> staging;
  for (const ParameterSpec& p : params_) {
    float* values = host_master_.data() + p.offset;
    if (!offloaded()) {
      staging.resize(p.numel);
      values = staging.data();
    }
    weights.read(p, values);
    upload_parameter(p, values);
  }
  refresh_bf16();
  sync();
  return weights.unread();
}

void CudaMistralModel::save_weights(const std::string& path, const std::vector<std::string>& names,
                                    SaveDType dtype, const std::map<std::string, std::string>& metadata) const {
  use_device();
  const StDType stored = dtype == SaveDType::F32 ? StDType::F32
                         : dtype == SaveDType::F16 ? StDType::F16 : StDType::BF16;
  std::vector<std::vector<float>> host(names.size());
  std::vector<StTensorToWrite> tensors;
  for (size_t i = 0; i < names.size(); ++i) {
    const ParameterSpec& p = parameter(names[i]);
    const float* values = host_master_.data() + p.offset;
    if (!offloaded()) {
      host[i].resize(p.numel);
      read_master(p, host[i].data());
      values = host[i].data();
    }
    tensors.push_back({p.name, stored, p.shape, values, StDType::F32});
  }
  write_safetensors(path, tensors, metadata);
}

// The moments pass through host memory whole (write_safetensors takes every tensor at once).
void CudaMistralModel::save_optimizer_state(const std::string& path) const {
  ZN_CHECK(options_.trainable, "model: a frozen model has no optimizer state");
  if (offloaded()) return write_optimizer_state(path, params_, host_m_.data(), host_v_.data(), step_);
  use_device();
  const size_t n = parameter_count(params_);
  std::vector<float> m(n), v(n);
  download(buf_->adam_m, n, m.data());
  download(buf_->adam_v, n, v.data());
  write_optimizer_state(path, params_, m.data(), v.data(), step_);
}

void CudaMistralModel::load_optimizer_state(const std::string& path) {
  ZN_CHECK(options_.trainable, "model: a frozen model has no optimizer state");
  use_device();
  SafetensorsFile file(path);
  const long step = optimizer_state_step(file);
  std::vector<float> staging;
  for (const ParameterSpec& p : params_) {
    if (offloaded()) {
      read_optimizer_moment(file, Moment::First, p, host_m_.data() + p.offset);
      read_optimizer_moment(file, Moment::Second, p, host_v_.data() + p.offset);
      continue;
    }
    staging.resize(p.numel);
    read_optimizer_moment(file, Moment::First, p, staging.data());
    upload(staging.data(), p.numel, buf_->adam_m + p.offset);
    read_optimizer_moment(file, Moment::Second, p, staging.data());
    upload(staging.data(), p.numel, buf_->adam_v + p.offset);
  }
  step_ = step;
}

// ---------------------------------------------------------------------------------------------
// Forward

// Checks the batch on the host (the CPU model's checks and words), then copies it in. The
// kernels' own device-side id checks are skipped: they would only repeat these.
void CudaMistralModel::upload_batch(const TokenBatchView& b) {
  validate_batch(config_, options_, b);
  tokens_ = b.tokens;
  n_docs_ = b.n_docs;
  cu_seqlens_.assign(b.cu_seqlens, b.cu_seqlens + b.n_docs + 1);
  const size_t bytes = size_t(b.tokens) * 4;
  const CudaBuffers& B = *buf_;
  ZN_CUDA_CHECK(cudaMemcpyAsync(B.input_ids, b.input_ids, bytes, cudaMemcpyHostToDevice, stream_));
  ZN_CUDA_CHECK(cudaMemcpyAsync(B.position_ids, b.position_ids, bytes, cudaMemcpyHostToDevice, stream_));
  ZN_CUDA_CHECK(cudaMemcpyAsync(B.targets, b.targets, bytes, cudaMemcpyHostToDevice, stream_));
  ZN_CUDA_CHECK(cudaMemcpyAsync(B.cu_seqlens, b.cu_seqlens, size_t(b.n_docs + 1) * 4,
                                cudaMemcpyHostToDevice, stream_));
}

DeviceBatch CudaMistralModel::batch() const {
  const CudaBuffers& B = *buf_;
  return {tokens_, n_docs_, B.input_ids, B.position_ids, B.targets, B.cu_seqlens};
}

void CudaMistralModel::download_logp(float* logp) const { download(buf_->logp, size_t(tokens_), logp); }

void CudaMistralModel::forward(const TokenBatchView& batch, float* logp) {
  ZN_CHECK(options_.trainable, "model: forward() keeps activations for backward, but this model "
           "was created with trainable: false; use logprobs()");
  use_device();
  have_activations_ = false;
  upload_batch(batch);
  decoder_->forward(this->batch(), buf_->acts, *this, true, buf_->logp);
  download_logp(logp);
  have_activations_ = true;
}

void CudaMistralModel::logprobs(const TokenBatchView& batch, float* logp) {
  use_device();
  have_activations_ = false;  // the shared slots are overwritten
  upload_batch(batch);
  decoder_->forward(this->batch(), buf_->acts, *this, false, buf_->logp);
  download_logp(logp);
}

// The last row of each document's final norm is gathered into layer slot 0's norm1 (free after a
// forward that keeps nothing; n_docs <= tokens rows fit), and the [docs, vocab] logits are made
// in chunks in the log-prob workspace, which holds a token chunk x vocab chunk of f32 logits.
void CudaMistralModel::next_token_logits(const TokenBatchView& batch, float* logits) {
  use_device();
  have_activations_ = false;
  upload_batch(batch);
  const DecoderBuffers& A = buf_->acts;
  decoder_->trunk_forward(this->batch(), buf_->acts, *this, false);
  const long d = config_.hidden_size, V = config_.vocab_size;
  const size_t row_bytes = size_t(d) * dtype_size(act_dtype());
  char* rows = static_cast<char*>(A.layers[0].norm1.data);
  for (int doc = 0; doc < n_docs_; ++doc) {
    const long row = cu_seqlens_[size_t(doc) + 1] - 1;
    ZN_CHECK(row >= cu_seqlens_[size_t(doc)], "model: next_token_logits: document ", doc, " is empty");
    ZN_CUDA_CHECK(cudaMemcpyAsync(rows + size_t(doc) * row_bytes,
                                  static_cast<const char*>(A.final_norm.data) + size_t(row) * row_bytes,
                                  row_bytes, cudaMemcpyDeviceToDevice, stream_));
  }
  const cuda::LogprobChunks chunks;
  const long row_chunk = std::min(options_.max_tokens, chunks.tokens), vocab_chunk = std::min(V, chunks.vocab);
  float* chunk_logits = static_cast<float*>(A.head.data);
  const ConstTensor head = weight(*index_.lm_head);
  std::vector<float> host(size_t(row_chunk * vocab_chunk));
  for (long r0 = 0; r0 < n_docs_; r0 += row_chunk) {
    const long nr = std::min(row_chunk, long(n_docs_) - r0);
    for (long v0 = 0; v0 < V; v0 += vocab_chunk) {
      const long nv = std::min(vocab_chunk, V - v0);
      cuda::gemm(false, true, nr, nv, d, 1.0f, {rows + size_t(r0) * row_bytes, act_dtype(), d},
                 {static_cast<const char*>(head.data) + size_t(v0 * d) * dtype_size(head.dtype), head.dtype, d},
                 0.0f, {chunk_logits, DType::F32, nv}, stream_);
      download(chunk_logits, size_t(nr * nv), host.data());
      for (long r = 0; r < nr; ++r)
        std::memcpy(logits + (r0 + r) * V + v0, host.data() + r * nv, size_t(nv) * sizeof(float));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward

void CudaMistralModel::forward_backward(const TokenBatchView& batch, const float* dlogp, float* logp) {
  ZN_CHECK(options_.trainable, "model: forwardBackward() on a model created with trainable: false");
  validate_dlogp(dlogp, batch.tokens);
  use_device();
  have_activations_ = false;
  upload_batch(batch);
  CudaBuffers& B = *buf_;
  ZN_CUDA_CHECK(cudaMemcpyAsync(B.dlogp, dlogp, size_t(tokens_) * sizeof(float), cudaMemcpyHostToDevice, stream_));
  decoder_->forward_backward(this->batch(), B.acts, *this, *this, B.dlogp, B.logp, options_.gradient_checkpointing);
  embedding_backward();
  download_logp(logp);
}

void CudaMistralModel::backward(const float* dlogp, long tokens) {
  ZN_CHECK(options_.trainable, "model: backward() on a model created with trainable: false");
  ZN_CHECK(have_activations_, "model: backward() needs a forward() first (each forward serves one "
           "backward; logprobs() and loading weights discard saved activations)");
  ZN_CHECK(tokens == tokens_, "model: dlogp has ", tokens, " elements, but the last forward() had ",
           tokens_, " tokens");
  use_device();
  have_activations_ = false;
  validate_dlogp(dlogp, tokens);
  CudaBuffers& B = *buf_;
  ZN_CUDA_CHECK(cudaMemcpyAsync(B.dlogp, dlogp, size_t(tokens_) * sizeof(float), cudaMemcpyHostToDevice, stream_));
  decoder_->backward(this->batch(), B.acts, *this, *this, B.dlogp, options_.gradient_checkpointing);
  embedding_backward();
}

// The lookup's gradient (dense) from d loss / d (embedding output), which the decoder left in
// dres; then the stream is drained, so a fault in any kernel surfaces in the call that caused it.
void CudaMistralModel::embedding_backward() {
  const CudaBuffers& B = *buf_;
  cuda::embedding_backward(tokens_, config_.hidden_size, config_.vocab_size, B.input_ids,
                           {B.acts.dres, DType::F32}, config_.pad_token_id, grad(*index_.embed), stream_);
  sync();
}

void CudaMistralModel::zero_grad() {
  ZN_CHECK(options_.trainable, "model: zeroGrad() on a model created with trainable: false");
  use_device();
  ZN_CUDA_CHECK(cudaMemsetAsync(buf_->grads, 0, parameter_count(params_) * sizeof(float), stream_));
  sync();
}

// ---------------------------------------------------------------------------------------------
// Optimizer: the norm of the one gradient buffer (f64, copied back: the metric and the finite
// check), then AdamW on the device (multi-tensor, the clipping coefficient computed there) or,
// with offload_optimizer, on the host.

double CudaMistralModel::clip_and_step(const AdamWOptions& hp) {
  ZN_CHECK(options_.trainable, "model: an optimizer step on a model created with trainable: false");
  validate_adamw(hp);
  use_device();
  CudaBuffers& B = *buf_;
  const cuda::GradSpan all{B.grads, long(parameter_count(params_))};
  cuda::sum_of_squares(&all, 1, B.grad_sum_of_squares, stream_);
  double sum_of_squares = 0;
  ZN_CUDA_CHECK(cudaMemcpyAsync(&sum_of_squares, B.grad_sum_of_squares, sizeof(double), cudaMemcpyDeviceToHost,
                                stream_));
  sync();
  const double norm = std::sqrt(sum_of_squares);
  check_grad_norm(norm);
  ++step_;
  if (offloaded()) {
    offloaded_adamw(hp, norm);
  } else {
    device_adamw(hp);
  }
  return norm;
}

void CudaMistralModel::device_adamw(const AdamWOptions& hp) {
  CudaBuffers& B = *buf_;
  cuda::clip_coefficient(B.grad_sum_of_squares, hp.max_grad_norm, B.clip_coefficient, stream_);
  std::vector<cuda::AdamWTensor> decay, no_decay;
  const bool bf16_copy = options_.precision == Precision::BF16;
  for (const ParameterSpec& p : params_) {
    (p.decay ? decay : no_decay)
        .push_back({B.master + p.offset, B.grads + p.offset, B.adam_m + p.offset, B.adam_v + p.offset,
                    bf16_copy ? B.weights_bf16 + p.offset : nullptr, long(p.numel)});
  }
  cuda::AdamWStep s{hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, step_, 1.0f};
  cuda::adamw_update(decay.data(), int(decay.size()), s, B.clip_coefficient, stream_);
  s.weight_decay = 0.0;
  cuda::adamw_update(no_decay.data(), int(no_decay.size()), s, B.clip_coefficient, stream_);
  sync();
}

// The CPU model's AdamW over the host master and moments, a chunk of the gradient at a time, on
// a pipeline over the staging buffers: chunk i is stepped on the host while the stream brings
// chunk i+1's gradients down and takes chunk i-1's new compute weights (bf16, or f32 in f32 mode)
// up. Before chunk i the host waits for chunk i's gradients only. That also covers the weight
// buffer it is about to fill: chunk i-2's upload, the last copy to read it, was issued before
// chunk i's gradient copy on the same stream, and a stream completes its copies in order.
void CudaMistralModel::offloaded_adamw(const AdamWOptions& hp, double norm) {
  CudaBuffers& B = *buf_;
  OffloadStaging& S = *staging_;
  const float scale = cpu::clip_coefficient(norm, hp.max_grad_norm);
  const bool bf16_mode = options_.precision == Precision::BF16;
  const size_t n = parameter_count(params_), weight_bytes = bf16_mode ? sizeof(bf16) : sizeof(float);
  char* device_weights = bf16_mode ? reinterpret_cast<char*>(B.weights_bf16) : reinterpret_cast<char*>(B.master);
  auto fetch = [&](size_t round) {
    const size_t begin = round * S.chunk;
    if (begin >= n) return;
    ZN_CUDA_CHECK(cudaMemcpyAsync(S.grads(round), B.grads + begin, std::min(S.chunk, n - begin) * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream_));
    ZN_CUDA_CHECK(cudaEventRecord(S.grads_arrived[round % 2].get(), stream_));
  };
  fetch(0);
  fetch(1);
  for (size_t begin = 0, round = 0; begin < n; begin += S.chunk, ++round) {
    const size_t end = std::min(n, begin + S.chunk);
    ZN_CUDA_CHECK(cudaEventSynchronize(S.grads_arrived[round % 2].get()));
    const float* grads = S.grads(round);
    void* weights = S.weights(round);
    for (const ParameterSpec& p : params_) {
      const size_t lo = std::max(begin, p.offset), hi = std::min(end, p.offset + p.numel);
      if (lo >= hi) continue;
      const cpu::AdamWStep s{hp.lr, hp.beta1, hp.beta2, hp.eps, p.decay ? hp.weight_decay : 0.0, step_, scale};
      bf16* copy = bf16_mode ? static_cast<bf16*>(weights) + (lo - begin) : nullptr;
      cpu::adamw_update(long(hi - lo), s, host_master_.data() + lo, grads + (lo - begin), host_m_.data() + lo,
                        host_v_.data() + lo, copy);
    }
    if (!bf16_mode) std::memcpy(weights, host_master_.data() + begin, (end - begin) * sizeof(float));
    ZN_CUDA_CHECK(cudaMemcpyAsync(device_weights + begin * weight_bytes, weights, (end - begin) * weight_bytes,
                                  cudaMemcpyHostToDevice, stream_));
    fetch(round + 2);  // into the gradient buffer just stepped
  }
  sync();
  if (B.norms) upload_norms_from_host();
}

}  // namespace zn::model
