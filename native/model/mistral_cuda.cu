// The Mistral model on the GPU (residency and dtypes: mistral_cuda.h): the one decoder
// (decoder.h) on CudaBackend, the model's one stream, over one device arena laid out from the
// plan; weights, gradients, the optimizer step and files are this file's.
#include "model/mistral_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/bf16.h"
#include "core/errors.h"
#include "core/thread_pool.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/logprob.h"
#include "model/safetensors.h"

namespace zn::model {

// ---------------------------------------------------------------------------------------------
// The arena: every device buffer of the model, laid out once for max_tokens: the parameters,
// then the step's buffers from one table (buffer_plan.h).

constexpr size_t kAlignment = 256;  // vector loads, cuBLASLt's preferred alignment, flash's 16 B

struct CudaBuffers {
  // Parameters (offsets of the parameter table apply to each).
  CudaWeightBuffers weights;
  CudaTrainBuffers train;  // trainable only
  // LoRA's adapters (offsets of the adapter table), as the base's.
  CudaWeightBuffers adapter_weights;
  CudaTrainBuffers adapter_train;
  // The batch of the last call, and the per-token values crossing to and from the host.
  int32_t *input_ids, *position_ids, *targets, *cu_seqlens;
  float *logp, *dlogp;
  // The decoder's activations, every layer's kept (each slot's own norm1, h, norm2 and act) and
  // its workspaces: head holds the log-prob chunks (also next_token_logits' logits chunks).
  DecoderBuffers acts;
  BufferPlan step{kAlignment};  // the table acts, the batch and the workspaces are laid out from
};

namespace {

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

// Adds entries to a step table and points at them in its region (null base: the table only).
class StepTable {
 public:
  StepTable(BufferPlan& plan, void* base, DType act) : plan_(plan), base_(base), act_(act) {}
  template <typename T>
  T* take(const std::string& name, size_t count, Lifetime live, BufferCategory category = BufferCategory::Activations) {
    return place<T>(base_, plan_, plan_.add(name, count * sizeof(T), live, category));
  }
  // An activation in the activation dtype.
  Tensor act(const std::string& name, size_t count, Lifetime live) {
    return {place<void>(base_, plan_, plan_.add(name, count * dtype_size(act_), live)), act_};
  }
  Workspace workspace(const std::string& name, size_t bytes, Lifetime live) {
    return {place<void>(base_, plan_, plan_.add(name, bytes, live, BufferCategory::Workspaces)), bytes};
  }

 private:
  BufferPlan& plan_;
  void* base_;
  DType act_;
};

LayerSlot take_layer_slot(const Widths& w, StepTable& t, size_t i, Lifetime kept) {
  auto name = [&](const char* what) { return std::string(what) + "." + std::to_string(i); };
  LayerSlot s;
  s.norm1 = t.act(name("norm1"), w.N * w.d, kept);
  s.rstd1 = t.take<float>(name("rstd1"), w.N, kept);
  s.q = t.act(name("q"), w.N * w.qd, kept);
  s.k = t.act(name("k"), w.N * w.kvd, kept);
  s.v = t.act(name("v"), w.N * w.kvd, kept);
  s.attn = t.act(name("attn"), w.N * w.qd, kept);
  s.lse = t.take<float>(name("lse"), w.heads * w.N, kept);
  s.h = t.take<float>(name("h"), w.N * w.d, kept);
  s.norm2 = t.act(name("norm2"), w.N * w.d, kept);
  s.rstd2 = t.take<float>(name("rstd2"), w.N, kept);
  s.gate = t.act(name("gate"), w.N * w.ffn, kept);
  s.up = t.act(name("up"), w.N * w.ffn, kept);
  s.act = t.act(name("act"), w.N * w.ffn, kept);
  return s;
}

// The backward's scratch: one set for all layers (each slot's dgate, dup, dq, dk, dv point here).
void take_backward_scratch(const Widths& w, DType dtype, const StepPhases& P, StepTable& t, DecoderBuffers& b) {
  const int top = P.layers - 1;
  const Lifetime layers{P.backward(top), P.backward(0)};
  b.dres = t.take<float>("dres", w.N * w.d, {P.final_norm_backward(), P.end()});
  // The head's d loss / d (final norm output): forward_backward's head writes it, backward's head_backward.
  b.dnorm = t.take<float>("dnorm", w.N * w.d, {P.head(), P.backward(0)});
  b.dnorm_x = t.take<float>("dnorm_x", w.N * w.d, layers);
  b.dres_operand = dtype == DType::BF16 ? t.act("dres_bf16", w.N * w.d, {P.final_norm_backward(), P.backward(0)})
                                        : f32(b.dres);
  b.dattn = t.act("dattn", w.N * w.qd, layers);
  const Tensor dq = t.act("dq", w.N * w.qd, layers), dk = t.act("dk", w.N * w.kvd, layers),
               dv = t.act("dv", w.N * w.kvd, layers);
  b.dact = t.act("dact", w.N * w.ffn, layers);
  const Tensor dgate = t.act("dgate", w.N * w.ffn, layers), dup = t.act("dup", w.N * w.ffn, layers);
  for (LayerSlot& s : b.layers) {
    s.dq = dq;
    s.dk = dk;
    s.dv = dv;
    s.dgate = dgate;
    s.dup = dup;
  }
}

// The step's buffers as one table (base: where its region starts; null: the table only): the
// batch, the per-token values crossing to the host, the activations (as the CPU model's
// plan_activations, every layer's kept) and the kernels' workspaces.
void plan_step(const MistralConfig& c, const ModelOptions& o, void* base, CudaBuffers& b) {
  const Widths w(c, o);
  const StepPhases P{c.num_layers};
  const int top = c.num_layers - 1;
  const bool train = o.trainable;
  const int forward_end = P.forward(top), step_end = train ? P.backward(0) : forward_end;
  const Lifetime call{P.embed(), P.end()};  // read by the model around the decoder too
  StepTable t(b.step, base, activation_dtype(o));
  DecoderBuffers& a = b.acts;
  b.input_ids = t.take<int32_t>("input_ids", w.N, call);
  b.position_ids = t.take<int32_t>("position_ids", w.N, call);
  b.targets = t.take<int32_t>("targets", w.N, call);
  b.cu_seqlens = t.take<int32_t>("cu_seqlens", w.N + 1, call);
  b.logp = t.take<float>("logp", w.N, call);
  b.dlogp = train ? t.take<float>("dlogp", w.N, call) : nullptr;
  a.residual.resize(train ? size_t(c.num_layers) + 1 : 2);
  for (size_t i = 0; i < a.residual.size(); ++i)
    a.residual[i] = t.take<float>("residual." + std::to_string(i), w.N * w.d, P.residual(i, train));
  a.layers.resize(train && !o.gradient_checkpointing ? size_t(c.num_layers) : 1);
  for (size_t i = 0; i < a.layers.size(); ++i) {
    a.layers[i] = take_layer_slot(w, t, i, P.slot(i, a.layers.size(), train));
  }
  a.final_norm = t.act("final_norm", w.N * w.d, {P.final_norm(), train ? P.head_backward() : P.head()});
  a.final_rstd = t.take<float>("final_rstd", w.N, {P.final_norm(), train ? P.final_norm_backward() : P.final_norm()});
  a.logit_lse = t.take<float>("logit_lse", w.N, {P.head(), train ? P.head_backward() : P.head()});
  if (train) take_backward_scratch(w, activation_dtype(o), P, t, a);
  // LoRA's [N, r] pair, which every projection recomputes where it needs it.
  const size_t r = size_t(o.lora.rank);
  const Tensor lora_t = r ? t.act("lora_t", w.N * r, {P.forward(0), step_end}) : Tensor{};
  const Tensor lora_dt = r && train ? t.act("lora_dt", w.N * r, {P.backward(top), P.backward(0)}) : Tensor{};
  // lora_dropout's dropped input, for the widest projection input (training only).
  const bool dropout = r && train && o.lora.dropout > 0;
  const Tensor lora_x = dropout ? t.act("lora_x", w.N * std::max({w.d, w.qd, w.ffn}), {P.forward(0), P.backward(0)}) : Tensor{};
  for (LayerSlot& s : a.layers) {
    s.lora_t = lora_t;
    s.lora_dt = lora_dt;
    s.lora_x = lora_x;
  }
  // Workspaces: the log-prob chunks (also the last rows' logits), the attention backward's
  // row sums, and each train state's clip scalars (read after the step's phases).
  a.head = t.workspace("logprob_chunks", cuda::logprob_workspace_bytes(logprob_shape(c, o.max_tokens)),
                       {P.head(), train ? P.head_backward() : P.head()});
  a.head_chunks = a.head;
  a.attention_backward = train ? t.workspace("attention_backward",
                                             cuda::attention_backward_workspace_bytes(attention_shape(c, o.max_tokens)),
                                             {P.backward(top), P.backward(0)})
                               : Workspace{};
  const Lifetime optimizer{P.end(), P.end()};
  b.train.grad_sum_of_squares = t.take<double>("grad_sum_of_squares", 1, optimizer, BufferCategory::Workspaces);
  b.train.clip_coefficient = t.take<float>("clip_coefficient", 1, optimizer, BufferCategory::Workspaces);
  if (r) {
    b.adapter_train.grad_sum_of_squares =
        t.take<double>("adapter_grad_sum_of_squares", 1, optimizer, BufferCategory::Workspaces);
    b.adapter_train.clip_coefficient = t.take<float>("adapter_clip_coefficient", 1, optimizer, BufferCategory::Workspaces);
  }
  b.step.check();
  a.plan = &b.step;
  a.base = base;
  a.poison = poison_ended_buffers();
}

// A parameter table's weights (CudaWeights) and, for its trained group, the train state's
// device buffers (CudaTrainState): the f32 master of a bf16 model that steps on the device, the
// gradients and the moments. Adds the bytes to the plan's categories. ZeRO (o.shard): the master
// and the moments of this rank's range only; the gradients stay whole.
void take_parameters(const std::vector<ParameterSpec>& table, size_t trained, const ModelOptions& o,
                     DeviceArena& arena, CudaWeightBuffers& weights, CudaTrainBuffers& train, MemoryPlan& plan) {
  const size_t params = parameter_count(table), owned = shard_range(trained, o.shard).size();
  const bool bf16_mode = o.precision == Precision::BF16, moments_here = o.trainable && !offloads(o);
  size_t mark = arena.used();
  auto close_section = [&](size_t& bytes) {
    bytes += arena.used() - mark;
    mark = arena.used();
  };
  weights.f32_values = bf16_mode ? nullptr : arena.take<float>(params);
  weights.bf16_values = bf16_mode ? arena.take<bf16>(params) : nullptr;
  weights.norms = bf16_mode ? arena.take<float>(norm_slots(table, nullptr)) : nullptr;
  train.master = bf16_mode && moments_here ? arena.take<float>(owned) : nullptr;
  close_section(plan.weights);
  train.grads = o.trainable ? arena.take<float>(trained) : nullptr;
  close_section(plan.grads);
  train.adam_m = moments_here ? arena.take<float>(owned) : nullptr;
  train.adam_v = moments_here ? arena.take<float>(owned) : nullptr;
  close_section(plan.optimizer);
}

// Lays the arena out for max_tokens (walked once to plan, once to allocate, so the two cannot
// disagree); returns the bytes of each category.
MemoryPlan layout(const MistralConfig& c, const ModelOptions& o, char* base, CudaBuffers& b) {
  const std::vector<ParameterSpec> table = parameter_table(c);
  const ParameterGroup trained(table, o.frozen);
  DeviceArena arena(base);
  MemoryPlan plan;
  take_parameters(table, o.trainable ? trained.numel() : 0, o, arena, b.weights, b.train, plan);
  std::unique_ptr<LoraTable> lora;
  if (o.lora.rank > 0) {
    lora = std::make_unique<LoraTable>(table, o.lora);
    const size_t adapters = parameter_count(lora->parameters());
    take_parameters(lora->parameters(), o.trainable ? adapters : 0, o, arena, b.adapter_weights, b.adapter_train,
                    plan);
  }
  plan_step(c, o, base ? base + arena.used() : nullptr, b);
  plan.activations = b.step.bytes(BufferCategory::Activations);
  plan.logits_chunks = b.step.bytes(BufferCategory::Workspaces);
  if (offloads(o)) {
    plan.host = CudaTrainState::offload_host_bytes(trained, o.precision, o.shard);
    if (lora) plan.host += CudaTrainState::offload_host_bytes(ParameterGroup(lora->parameters()), o.precision, o.shard);
  }
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
  Owners& o = owners_;
  o.params = parameter_table(config_);
  o.index = index_parameters(config_, o.params);
  o.trained = std::make_unique<ParameterGroup>(o.params, options_.frozen);
  if (options_.lora.rank > 0) {
    o.lora = std::make_unique<LoraTable>(o.params, options_.lora);
    o.adapter_group = std::make_unique<ParameterGroup>(o.lora->parameters());
  }
  const int devices = cuda::device_count();  // a readable error when there is no GPU or driver
  if (options_.cuda_device >= 0) {
    ZN_CHECK(options_.cuda_device < devices, "model: cudaDevice ", options_.cuda_device, " does not exist (",
             devices, " GPU", devices == 1 ? "" : "s", " visible)");
    ZN_CUDA_CHECK(cudaSetDevice(options_.cuda_device));
  }
  ZN_CUDA_CHECK(cudaGetDevice(&device_));
  if (offloads(options_)) {
    check_host_memory(plan_.host, "offloadOptimizer (the f32 master, the AdamW moments and the copy buffers)",
                      "a machine with more host memory, or offloadOptimizer: false where the device holds them");
  }
  try {
    ZN_CUDA_CHECK(cudaStreamCreate(&stream_));
    backend_.set_stream(stream_);
    allocate();
    o.weights = std::make_unique<CudaWeights>(o.params, buf_->weights, stream_);
    if (options_.trainable && o.trained->numel() > 0) {
      o.state = std::make_unique<CudaTrainState>(*o.trained, offloads(options_), *o.weights, buf_->train, backend_,
                                                 stream_, options_.shard);
    }
    if (o.lora) {
      o.adapter_weights = std::make_unique<CudaWeights>(o.lora->parameters(), buf_->adapter_weights, stream_);
      if (options_.trainable) {
        o.adapter_state = std::make_unique<CudaTrainState>(*o.adapter_group, offloads(options_), *o.adapter_weights,
                                                           buf_->adapter_train, backend_, stream_, options_.shard);
      }
    }
    o.link();
    if (o.lora) decoder_->set_adapters(&o.adapters);
  } catch (...) {
    if (arena_) cudaFree(arena_);
    if (stream_) cudaStreamDestroy(stream_);
    throw;
  }
}

CudaMistralModel::~CudaMistralModel() {
  cudaSetDevice(device_);
  owners_.state.reset();  // their pinned buffers go before the stream
  owners_.adapter_state.reset();
  free_generation();
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
  decoder_ = std::make_unique<Decoder>(config_, owners_.index, backend_, Recompute{});
  ZN_CUDA_CHECK(cudaMemsetAsync(arena_, 0, plan_.total(), stream_));
  sync();
}

void CudaMistralModel::use_device() const { ZN_CUDA_CHECK(cudaSetDevice(device_)); }

void CudaMistralModel::sync() const { ZN_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void CudaMistralModel::download(const float* device, size_t count, float* host) const {
  ZN_CUDA_CHECK(cudaMemcpyAsync(host, device, count * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  sync();
}

std::vector<CudaTrainState*> CudaMistralModel::train_states(const char* what) const {
  ZN_CHECK(options_.trainable, "model: ", what, " on a model created with trainable: false");
  use_device();
  return owners_.states();
}

void CudaMistralModel::merge_adapters() {
  fail("model: mergeAdapters() runs on the CPU model (device: 'cpu'), where the merged f32 weights are written");
}

void CudaMistralModel::set_adapters_enabled(bool enabled) {
  ZN_CHECK(owners_.lora, "model: setAdaptersEnabled() on a model without LoRA adapters");
  have_activations_ = false;
  decoder_->set_adapters(enabled ? &owners_.adapters : nullptr);
}

long CudaMistralModel::optimizer_step() const { return owners_.optimizer_step(); }

// The f32 master of a trainable model (host, or device); else the weights, widened from bf16.
void CudaMistralModel::read_master(const ParameterSpec& p, float* out) const {
  use_device();
  if (CudaTrainState* s = owners_.state_of(p)) return s->read_master(p, out);
  owners_.weights_of(p).read(p, out);
}

void CudaMistralModel::read_gradient(const ParameterSpec& p, float* out) const {
  ZN_CHECK(options_.trainable, "model: gradients exist only for a trainable model");
  use_device();
  CudaTrainState* s = owners_.state_of(p);
  ZN_CHECK(s, "model: '", p.name, "' is frozen (it belongs to no trained parameter group)");
  s->read_gradient(p, out);
}

DType CudaMistralModel::act_dtype() const { return activation_dtype(options_); }

// ---------------------------------------------------------------------------------------------
// Weights and optimizer state in and out (through host staging buffers)

void CudaMistralModel::read_parameter(WeightFiles& files, const ParameterSpec& p, const std::string& stored,
                                      std::vector<float>& staging) {
  CudaTrainState* s = owners_.state_of(p);
  float* values = s ? s->host_master(p) : nullptr;  // offloaded: read in place
  if (!values) {
    staging.resize(p.numel);
    values = staging.data();
  }
  files.read(p, stored, values);
  if (s) {
    s->write_master(p, values);
  } else {
    owners_.weights_of(p).assign(p, values);
  }
}

void CudaMistralModel::read_parameters(WeightFiles& files, const std::vector<ParameterSpec>& table) {
  use_device();
  have_activations_ = false;
  std::vector<float> staging;
  for (const ParameterSpec& p : table) read_parameter(files, p, p.name, staging);
  for (CudaTrainState* s : owners_.states()) s->publish();
  sync();
}

std::vector<std::string> CudaMistralModel::load_weights(const std::vector<std::string>& files) {
  WeightFiles weights(files);
  read_parameters(weights, owners_.params);
  return weights.unread();
}

AdapterLoad CudaMistralModel::load_adapters(const std::vector<std::string>& files) {
  ZN_CHECK(owners_.lora, "model: loadAdapters() on a model without LoRA adapters");
  use_device();
  WeightFiles weights(files);
  AdapterLoad out;
  std::vector<float> staging;
  for (const ParameterSpec* p : owners_.lora->saved_modules()) {
    const std::string stored = peft_saved_name(p->name);
    if (weights.has(stored)) {
      read_parameter(weights, *p, stored, staging);
    } else {
      out.absent.push_back(p->name);
    }
  }
  read_parameters(weights, owners_.lora->parameters());  // publishes every state
  out.unexpected = weights.unread();
  return out;
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
    const CudaTrainState* s = owners_.state_of(p);
    const float* values = s ? s->host_master(p) : nullptr;
    if (!values) {
      host[i].resize(p.numel);
      read_master(p, host[i].data());
      values = host[i].data();
    }
    tensors.push_back({names[i], stored, p.shape, values, StDType::F32});  // a saved module: PEFT's name
  }
  write_safetensors(path, tensors, metadata);
}

void CudaMistralModel::save_optimizer_state(const std::string& path) const {
  ZN_CHECK(options_.trainable, "model: a frozen model has no optimizer state");
  std::vector<OptimizerMoments> groups;
  for (CudaTrainState* s : train_states("saving optimizer state")) groups.push_back(s->moments());
  write_optimizer_state(path, groups, optimizer_step());
}

void CudaMistralModel::load_optimizer_state(const std::string& path) {
  load_optimizer_state(std::vector<std::string>{path});
}

void CudaMistralModel::save_optimizer_shard(const std::string& path) const {
  ZN_CHECK(options_.trainable, "model: a frozen model has no optimizer state");
  use_device();
  owners_.save_optimizer_shard(path, options_.shard);
}

void CudaMistralModel::load_optimizer_state(const std::vector<std::string>& paths) {
  ZN_CHECK(options_.trainable, "model: a frozen model has no optimizer state");
  use_device();
  owners_.load_optimizer_files(paths);
  sync();
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
  decoder_->set_dropout(owners_.next_dropout_draw());  // a training forward
  decoder_->forward(this->batch(), buf_->acts, *owners_.weights, true, buf_->logp);
  download_logp(logp);
  have_activations_ = true;
}

void CudaMistralModel::logprobs(const TokenBatchView& batch, float* logp) {
  use_device();
  have_activations_ = false;  // the shared slots are overwritten
  upload_batch(batch);
  decoder_->set_dropout(nullptr);  // evaluation: no dropout
  decoder_->forward(this->batch(), buf_->acts, *owners_.weights, false, buf_->logp);
  download_logp(logp);
}

// The last row of each document's final norm is gathered into layer slot 0's norm1 (free after a
// forward that keeps nothing; n_docs <= tokens rows fit), and the [docs, vocab] logits are made
// in chunks in the log-prob workspace, which holds a token chunk x vocab chunk of f32 logits.
void CudaMistralModel::next_token_logits(const TokenBatchView& batch, float* logits) {
  use_device();
  have_activations_ = false;
  upload_batch(batch);
  decoder_->set_dropout(nullptr);  // evaluation: no dropout
  decoder_->trunk_forward(this->batch(), buf_->acts, *owners_.weights, false);
  last_row_logits(cu_seqlens_.data(), n_docs_, logits);
}

// The last row of each document's final norm is gathered into layer slot 0's norm1 (free after a
// forward that keeps nothing; n <= tokens rows fit), and the [n, vocab] logits are made in
// chunks in the log-prob workspace, which holds a token chunk x vocab chunk of f32 logits.
void CudaMistralModel::last_row_logits(const int32_t* cu_seqlens, int n, float* logits) {
  const DecoderBuffers& A = buf_->acts;
  const long d = config_.hidden_size, V = config_.vocab_size;
  const size_t row_bytes = size_t(d) * dtype_size(act_dtype());
  char* rows = static_cast<char*>(A.layers[0].norm1.data);
  for (int doc = 0; doc < n; ++doc) {
    const long row = cu_seqlens[size_t(doc) + 1] - 1;
    ZN_CHECK(row >= cu_seqlens[size_t(doc)], "model: next_token_logits: document ", doc, " is empty");
    ZN_CUDA_CHECK(cudaMemcpyAsync(rows + size_t(doc) * row_bytes,
                                  static_cast<const char*>(A.final_norm.data) + size_t(row) * row_bytes,
                                  row_bytes, cudaMemcpyDeviceToDevice, stream_));
  }
  const cuda::LogprobChunks chunks;
  const long row_chunk = std::min(options_.max_tokens, chunks.tokens), vocab_chunk = std::min(V, chunks.vocab);
  float* chunk_logits = static_cast<float*>(A.head.data);
  const ConstTensor head = owners_.weights->weight(*owners_.index.lm_head);
  std::vector<float> host(size_t(row_chunk * vocab_chunk));
  for (long r0 = 0; r0 < n; r0 += row_chunk) {
    const long nr = std::min(row_chunk, long(n) - r0);
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
// Generation

namespace {

// The generation allocation: the cache, then the cache rows of a call's tokens, each sequence's
// first key row and key count, and every cache row's position.
struct GenerationLayout {
  size_t cache, cache_rows, k_begin, k_len, k_positions, total;
  GenerationLayout(const KvCacheShape& shape, long max_tokens) {
    DeviceArena arena(nullptr);
    cache = arena.used();
    arena.take_bytes(shape.bytes());
    cache_rows = arena.used();
    arena.take<int32_t>(size_t(max_tokens));
    k_begin = arena.used();
    arena.take<int32_t>(size_t(shape.slots));
    k_len = arena.used();
    arena.take<int32_t>(size_t(shape.slots));
    k_positions = arena.used();
    arena.take<int32_t>(size_t(shape.slots) * size_t(shape.capacity));
    total = arena.used();
  }
};

}  // namespace

size_t CudaMistralModel::generation_bytes(const MistralConfig& config, const ModelOptions& options, int sequences,
                                          long max_context) {
  const KvCacheShape shape = KvCacheShape::for_model(config, max_context, sequences, activation_dtype(options));
  return GenerationLayout(shape, options.max_tokens).total;
}

void CudaMistralModel::free_generation() {
  cache_.reset();
  if (generation_memory_) cudaFree(generation_memory_);
  generation_memory_ = nullptr;
}

void CudaMistralModel::start_generation(int sequences, long max_context) {
  use_device();
  const KvCacheShape shape = KvCacheShape::for_model(config_, max_context, sequences, act_dtype());
  const GenerationLayout layout(shape, options_.max_tokens);
  free_generation();
  const cuda::DeviceInfo device = cuda::device_info(device_);
  ZN_CHECK(layout.total <= device.free_memory, "model: the generation cache needs ", gib(layout.total), " on GPU ",
           device.index, " (", device.name, "), which has ", gib(device.free_memory),
           " free; try fewer sequences at once or a shorter context");
  ZN_CUDA_CHECK(cudaMalloc(&generation_memory_, layout.total));
  char* base = static_cast<char*>(generation_memory_);
  ZN_CUDA_CHECK(cudaMemsetAsync(base, 0, layout.total, stream_));
  cache_ = std::make_unique<KvCache>(shape, base + layout.cache);
  cache_rows_ = reinterpret_cast<int32_t*>(base + layout.cache_rows);
  k_begin_ = reinterpret_cast<int32_t*>(base + layout.k_begin);
  k_len_ = reinterpret_cast<int32_t*>(base + layout.k_len);
  k_positions_ = reinterpret_cast<int32_t*>(base + layout.k_positions);
  max_context_ = max_context;
  sync();
}

KvCache& CudaMistralModel::cache(const char* what) const {
  ZN_CHECK(cache_, "model: ", what, " before startGeneration()");
  return *cache_;
}

int CudaMistralModel::acquire_sequence() { return cache("acquireSequence()").acquire(); }

void CudaMistralModel::release_sequence(int slot) { cache("releaseSequence()").release(slot); }

// The plan's arrays go up (the batch's into the model's batch buffers; of the key positions only
// this call's slots' rows, or the step's own positions for fresh prompts), then the decoder runs.
void CudaMistralModel::extend(const ExtendRequest& request, float* logits) {
  KvCache& kv = cache("extend()");
  use_device();
  have_activations_ = false;
  const ExtendPlan plan = plan_extend(kv, request, options_.max_tokens, config_.vocab_size, max_context_);
  const CudaBuffers& B = *buf_;
  auto up = [&](void* device, const int32_t* host, size_t count) {
    ZN_CUDA_CHECK(cudaMemcpyAsync(device, host, count * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  };
  const size_t N = size_t(plan.tokens), n = size_t(request.sequences);
  up(B.input_ids, request.tokens, N);
  up(B.position_ids, plan.positions.data(), N);
  up(B.targets, plan.targets.data(), N);
  up(B.cu_seqlens, plan.cu_seqlens.data(), n + 1);
  up(cache_rows_, plan.cache_rows.data(), N);
  up(k_begin_, plan.k_begin.data(), n);
  up(k_len_, plan.k_len.data(), n);
  const int32_t* key_positions = B.position_ids;
  if (plan.keys_from_cache) {
    for (size_t s = 0; s < n; ++s)
      up(k_positions_ + plan.k_begin[s], plan.k_positions.data() + plan.k_begin[s], size_t(plan.k_len[s]));
    key_positions = k_positions_;
  }
  tokens_ = plan.tokens;
  n_docs_ = request.sequences;
  const CachedStep step{&kv, cache_rows_,
                        plan.keys(B.cu_seqlens, B.position_ids, k_begin_, k_len_, key_positions),
                        plan.keys_from_cache};
  decoder_->set_dropout(nullptr);  // evaluation: no dropout
  decoder_->forward_cached(batch(), step, buf_->acts, *owners_.weights);
  last_row_logits(plan.cu_seqlens.data(), request.sequences, logits);
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
  decoder_->set_dropout(owners_.next_dropout_draw());  // a training forward
  decoder_->forward_backward(this->batch(), B.acts, *owners_.weights, *owners_.gradients, B.dlogp, B.logp,
                             options_.gradient_checkpointing);
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
  decoder_->backward(this->batch(), B.acts, *owners_.weights, *owners_.gradients, B.dlogp, options_.gradient_checkpointing);
  embedding_backward();
}

// The lookup's gradient (dense) from d loss / d (embedding output), which the decoder left in
// dres; then the stream is drained, so a fault in any kernel surfaces in the call that caused it.
void CudaMistralModel::embedding_backward() {
  const CudaBuffers& B = *buf_;
  if (float* grad = owners_.state ? owners_.state->grad(*owners_.index.embed) : nullptr) {  // null: a frozen embedding
    cuda::embedding_backward(tokens_, config_.hidden_size, config_.vocab_size, B.input_ids,
                             {B.acts.dres, DType::F32}, config_.pad_token_id, grad, stream_);
  }
  sync();
}

void CudaMistralModel::zero_grad() {
  for (CudaTrainState* s : train_states("zeroGrad()")) s->zero_grad();
}

// One global norm over every trained group, as torch's clip_grad_norm_ over the trainable
// parameters, then each group's step with the same clipping.
void CudaMistralModel::check_communicator(const parallel::NcclCommunicator& communicator, const char* what) const {
  ZN_CHECK(communicator.device() == device_, what, ": the communicator is on GPU ", communicator.device(),
           " and the model on GPU ", device_);
  use_device();
}

void CudaMistralModel::all_reduce_gradients(parallel::NcclCommunicator& communicator) {
  const std::vector<CudaTrainState*> states = train_states("allReduceGradients()");
  check_communicator(communicator, "allReduceGradients");
  for (CudaTrainState* s : states)
    communicator.all_reduce_sum(s->gradients(), s->group().numel(), stream_, "the gradient all-reduce");
}

double CudaMistralModel::clip_and_step(const AdamWOptions& hp) {
  const std::vector<CudaTrainState*> states = train_states("an optimizer step");
  StepTimer timer(options_.profile_steps);
  double squares = 0;
  for (const CudaTrainState* s : states) squares += s->grad_sum_of_squares();  // each waits for its sum
  return step_clipped(hp, squares, timer);
}

double CudaMistralModel::clip_and_step(const AdamWOptions& hp, double grad_sum_of_squares) {
  StepTimer timer(options_.profile_steps);
  return step_clipped(hp, grad_sum_of_squares, timer);
}

double CudaMistralModel::step_clipped(const AdamWOptions& hp, double squares, StepTimer& timer) {
  const std::vector<CudaTrainState*> states = train_states("an optimizer step");
  validate_adamw(hp);
  profile_ = {};
  StepProfile* profile = options_.profile_steps ? &profile_ : nullptr;
  const double norm = std::sqrt(squares);
  check_grad_norm(norm);
  timer.lap(profile ? &profile->clip : nullptr);
  for (CudaTrainState* s : states) s->step(hp, squares, profile);
  profiled_ = profile != nullptr;
  return norm;
}

// ---------------------------------------------------------------------------------------------
// ZeRO (zero_shard.h) on GPU ranks

// train_states() first: it refuses a model that is not trainable and makes the model's GPU current.
std::vector<std::vector<size_t>> CudaMistralModel::gradient_shard_counts() const {
  train_states("gradient shards");
  return owners_.gradient_shard_counts();
}

double CudaMistralModel::shard_grad_sum_of_squares() const {
  train_states("a shard's gradient norm");
  return owners_.shard_grad_sum_of_squares();
}

void CudaMistralModel::reduce_scatter_gradients(parallel::NcclCommunicator& communicator) {
  const std::vector<CudaTrainState*> states = train_states("reduceScatterGradients()");
  check_communicator(communicator, "reduceScatterGradients");
  ZN_CHECK(communicator.size() == options_.shard.count, "reduceScatterGradients: the communicator has ",
           communicator.size(), " ranks and the model is sharded ", options_.shard.count, " ways");
  for (CudaTrainState* s : states)
    communicator.reduce_scatter_sum(s->gradients(), s->gradient_shard_counts(), stream_, "the gradient reduce-scatter");
}

void CudaMistralModel::all_gather_weights(parallel::NcclCommunicator& communicator) {
  check_communicator(communicator, "allGatherWeights");
  ZN_CHECK(communicator.size() == options_.shard.count, "allGatherWeights: the communicator has ", communicator.size(),
           " ranks and the model is sharded ", options_.shard.count, " ways");
  for (const WeightSegment& w : weight_segments())
    communicator.all_gather(w.data, w.bf16 ? parallel::NcclElement::BF16 : parallel::NcclElement::F32, w.counts, stream_,
                            "the updated weights all-gather");
}

std::vector<WeightSegment> CudaMistralModel::weight_segments() const {
  train_states("weight segments");
  return owners_.weight_segments();
}

}  // namespace zn::model
