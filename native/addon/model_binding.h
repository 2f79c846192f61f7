// The Mistral model as a JS class (`new addon.Model({config, dtype, maxTokens, ...})`), one
// template over the model class so that the CPU addon (model::MistralModel, model_binding.cpp) and
// the CUDA addon (model::CudaMistralModel, cuda_model_binding.cpp) expose the same JS surface and
// lib/model/model.ts drives either. Only argument conversion lives here. Long work runs off the
// main thread; one call at a time per model (a second call while one runs is an error, since
// forward/backward pairs share the model's saved activations).
//
// What a Model class provides: static plan(config, options) -> MemoryPlan; a constructor from
// (config, options); the methods of model::MistralModel (mistral.h), with parameter values and
// gradients read through read_master / read_gradient (host copies).
#pragma once
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "addon/binding.h"
#include "core/errors.h"
#include "model/mistral.h"

namespace zn::model {
class CudaMistralModel;
}

namespace zn::addon {

// The GPU model's collectives over an NCCL communicator's ranks: the gradient all-reduce (ZeRO
// stages 0 and 1), the gradient reduce-scatter (stage 2) and the all-gather of the updated weights
// (stages 1 and 2). The work is cuda_model_binding.cpp's; the CPU model has none (its ranks
// use gradientBuffers() and weightSegments() over MPI).
enum class NcclWork { AllReduceGradients, ReduceScatterGradients, AllGatherWeights };
std::function<void(model::CudaMistralModel&)> nccl_work(const Options& options, Napi::Object communicator,
                                                        model::CudaMistralModel*, NcclWork work);
[[noreturn]] inline std::function<void(model::MistralModel&)> nccl_work(const Options& options, Napi::Object,
                                                                         model::MistralModel*, NcclWork) {
  options.error("the CPU model's ranks use gradientBuffers() and weightSegments() over MPI; NCCL collectives are the GPU model's");
}


inline model::MistralConfig read_config(const Options& o) {
  model::MistralConfig c;
  c.vocab_size = long(o.integer("vocabSize"));
  c.hidden_size = long(o.integer("hiddenSize"));
  c.intermediate_size = long(o.integer("intermediateSize"));
  c.num_layers = int(o.integer("numHiddenLayers"));
  c.num_heads = int(o.integer("numAttentionHeads"));
  c.num_kv_heads = int(o.integer("numKeyValueHeads"));
  c.head_dim = int(o.integer("headDim"));
  c.rms_norm_eps = float(o.number("rmsNormEps"));
  c.rope_theta = float(o.number("ropeTheta"));
  c.sliding_window = long(o.integer("slidingWindow", 0));
  c.tie_word_embeddings = o.boolean("tieWordEmbeddings", false);
  c.pad_token_id = long(o.integer("padTokenId", -1));
  return c;
}

inline model::ModelOptions read_model_options(const Options& o) {
  model::ModelOptions m;
  const std::string dtype = o.string("dtype", "f32");
  if (dtype != "f32" && dtype != "bf16") o.error("'dtype' must be 'f32' or 'bf16', got '" + dtype + "'");
  m.precision = dtype == "bf16" ? model::Precision::BF16 : model::Precision::F32;
  m.max_tokens = long(o.integer("maxTokens"));
  if (m.max_tokens <= 0) o.error("'maxTokens' must be positive, got " + std::to_string(m.max_tokens));
  m.gradient_checkpointing = o.boolean("gradientCheckpointing", false);
  m.trainable = o.boolean("trainable", true);
  m.offload_optimizer = o.boolean("offloadOptimizer", false);
  m.dense_embedding_gradient = o.boolean("denseEmbeddingGradient", false);
  if (o.has("shard")) {  // ZeRO: {rank, count}
    const Options shard = o.object("shard");
    m.shard.count = int(shard.integer("count"));
    m.shard.rank = int(shard.integer("rank"));
    if (m.shard.count < 1 || m.shard.rank < 0 || m.shard.rank >= m.shard.count)
      shard.error("'rank' must be in [0, count) and 'count' >= 1, got rank " + std::to_string(m.shard.rank) +
                  " of " + std::to_string(m.shard.count));
  }
  m.profile_steps = o.boolean("profileSteps", false);
  m.cuda_device = int(o.integer("cudaDevice", -1));
  if (m.cuda_device < -1) o.error("'cudaDevice' must be a device ordinal (>= 0) or -1, got " + std::to_string(m.cuda_device));
  if (o.has("frozen")) m.frozen = o.strings("frozen");
  if (o.has("lora")) {
    const Options lora = o.object("lora");
    m.lora.rank = int(lora.integer("rank"));
    m.lora.alpha = lora.number("alpha");
    m.lora.rslora = lora.boolean("rslora", false);
    m.lora.target_modules = lora.strings("targetModules");
    m.lora.dropout = lora.number("dropout", 0.0);
    if (!(m.lora.dropout >= 0 && m.lora.dropout < 1))
      lora.error("'dropout' must be in [0, 1), got " + std::to_string(m.lora.dropout));
    m.lora.dropout_seed = uint64_t(lora.integer("dropoutSeed", 0));  // any integer: its 64 bits name the masks
    if (lora.has("modulesToSave")) m.lora.modules_to_save = lora.strings("modulesToSave");
  }
  return m;
}

inline Napi::Array string_array(Napi::Env env, const std::vector<std::string>& values) {
  Napi::Array out = Napi::Array::New(env, values.size());
  for (size_t i = 0; i < values.size(); ++i) out.Set(uint32_t(i), values[i]);
  return out;
}

inline Napi::Object plan_object(Napi::Env env, const model::MemoryPlan& plan) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("weights", double(plan.weights));
  out.Set("grads", double(plan.grads));
  out.Set("optimizer", double(plan.optimizer));
  out.Set("activations", double(plan.activations));
  out.Set("logitsChunks", double(plan.logits_chunks));
  out.Set("total", double(plan.total()));
  out.Set("host", double(plan.host));
  return out;
}

inline Napi::Float32Array copy_to_js(Napi::Env env, const float* data, size_t n) {
  Napi::Float32Array out = Napi::Float32Array::New(env, n);
  std::copy(data, data + n, out.Data());
  return out;
}

// generationMemory({config, dtype, maxTokens, sequences, maxContext}): the bytes startGeneration
// would allocate (the KvCache, and on a GPU the per-call arrays beside it).
template <class Model>
Napi::Value GenerationMemory(const Napi::CallbackInfo& info) {
  Options options(info, "generationMemory");
  size_t bytes = 0;
  run_sync(options, [&] {
    bytes = Model::generation_bytes(read_config(options.object("config")), read_model_options(options),
                                    int(options.integer("sequences")), long(options.integer("maxContext")));
  });
  return Napi::Number::New(info.Env(), double(bytes));
}

// modelMemoryPlan({config, dtype, maxTokens, ...}): the bytes a Model would allocate.
template <class Model>
Napi::Value ModelMemoryPlan(const Napi::CallbackInfo& info) {
  Options options(info, "modelMemoryPlan");
  model::MemoryPlan plan;
  run_sync(options, [&] { plan = Model::plan(read_config(options.object("config")), read_model_options(options)); });
  return plan_object(info.Env(), plan);
}

template <class Model>
class ModelWrap : public Napi::ObjectWrap<ModelWrap<Model>> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return ModelWrap::DefineClass(env, "Model",
                       {ModelWrap::InstanceMethod("parameters", &ModelWrap::Parameters),
                        ModelWrap::InstanceMethod("adapterParameters", &ModelWrap::AdapterParameters),
                        ModelWrap::InstanceMethod("loadAdapters", &ModelWrap::LoadAdapters),
                        ModelWrap::InstanceMethod("setAdaptersEnabled", &ModelWrap::SetAdaptersEnabled),
                        ModelWrap::InstanceMethod("mergeAdapters", &ModelWrap::MergeAdapters),
                        ModelWrap::InstanceMethod("memoryPlan", &ModelWrap::MemoryPlan),
                        ModelWrap::InstanceMethod("loadWeights", &ModelWrap::LoadWeights),
                        ModelWrap::InstanceMethod("saveWeights", &ModelWrap::SaveWeights),
                        ModelWrap::InstanceMethod("forward", &ModelWrap::Forward),
                        ModelWrap::InstanceMethod("logprobs", &ModelWrap::Logprobs),
                        ModelWrap::InstanceMethod("nextTokenLogits", &ModelWrap::NextTokenLogits),
                        ModelWrap::InstanceMethod("backward", &ModelWrap::Backward),
                        ModelWrap::InstanceMethod("forwardBackward", &ModelWrap::ForwardBackward),
                        ModelWrap::InstanceMethod("zeroGrad", &ModelWrap::ZeroGrad),
                        ModelWrap::InstanceMethod("clipAndStep", &ModelWrap::ClipAndStep),
                        ModelWrap::InstanceMethod("saveOptimizerState", &ModelWrap::SaveOptimizerState),
                        ModelWrap::InstanceMethod("loadOptimizerState", &ModelWrap::LoadOptimizerState),
                        ModelWrap::InstanceMethod("optimizerStep", &ModelWrap::OptimizerStep),
                        ModelWrap::InstanceMethod("stepProfile", &ModelWrap::StepProfile),
                        ModelWrap::InstanceMethod("getParameter", &ModelWrap::GetParameter),
                        ModelWrap::InstanceMethod("getGradient", &ModelWrap::GetGradient),
                        ModelWrap::InstanceMethod("gradientBuffers", &ModelWrap::GradientBuffers),
                        ModelWrap::InstanceMethod("gradientShardCounts", &ModelWrap::GradientShardCounts),
                        ModelWrap::InstanceMethod("shardGradSumOfSquares", &ModelWrap::ShardGradSumOfSquares),
                        ModelWrap::InstanceMethod("weightSegments", &ModelWrap::WeightSegments),
                        ModelWrap::InstanceMethod("saveOptimizerShard", &ModelWrap::SaveOptimizerShard),
                        ModelWrap::InstanceMethod("allReduceGradients", &ModelWrap::AllReduceGradients),
                        ModelWrap::InstanceMethod("reduceScatterGradients", &ModelWrap::ReduceScatterGradients),
                        ModelWrap::InstanceMethod("allGatherWeights", &ModelWrap::AllGatherWeights),
                        ModelWrap::InstanceMethod("startGeneration", &ModelWrap::StartGeneration),
                        ModelWrap::InstanceMethod("acquireSequence", &ModelWrap::AcquireSequence),
                        ModelWrap::InstanceMethod("releaseSequence", &ModelWrap::ReleaseSequence),
                        ModelWrap::InstanceMethod("extend", &ModelWrap::Extend),
                        ModelWrap::InstanceMethod("dispose", &ModelWrap::Dispose)});
  }

  explicit ModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelWrap<Model>>(info) {
    Options options(info, "Model");
    run_sync(options, [&] {
      const model::ModelOptions model_options = read_model_options(options);
      model_ = std::make_shared<Model>(read_config(options.object("config")), model_options);
    });
  }

 private:
  // The model is shared with in-flight work, so garbage-collecting the JS object mid-call is safe.
  std::shared_ptr<Model> model_;
  std::shared_ptr<std::atomic<bool>> busy_ = std::make_shared<std::atomic<bool>>(false);
  Napi::Reference<Napi::Array> grad_views_;     // gradientBuffers(), made on first use
  Napi::Reference<Napi::Array> weight_views_;   // weightSegments()' arrays, made on first use

  // The model, or a JS error when dispose() has freed it.
  Model& live(Napi::Env env, const char* op) const {
    if (!model_) throw Napi::Error::New(env, std::string(op) + ": the model was disposed");
    return *model_;
  }

  void claim(const Options& options) {
    if (!model_) options.error("the model was disposed");
    if (busy_->exchange(true)) {
      options.error("the model is busy with another call (await each call before the next)");
    }
  }

  // Runs work on the model off the main thread. The model stays busy until the promise settles
  // (on the main thread), so JS never sees it free while a call's promise is pending. Errors are
  // carried to the main thread and reject the promise there, named after the op.
  Napi::Promise run(const Options& options, std::function<void(Model&)> work,
                    std::function<Napi::Value(Napi::Env)> result = nullptr) {
    claim(options);
    auto model = model_;
    auto busy = busy_;
    auto error = std::make_shared<std::string>();
    auto failed = std::make_shared<bool>(false);
    return run_async(
        options,
        [model, work, error, failed] {
          try {
            work(*model);
          } catch (const std::exception& e) {
            *failed = true;
            *error = e.what();
          }
        },
        [busy, result, error, failed, op = std::string(options.op())](Napi::Env env) -> Napi::Value {
          *busy = false;
          if (*failed) throw Napi::Error::New(env, op + ": " + *error);
          return result ? result(env) : env.Undefined();
        });
  }

  void check_idle(const Options& options) const {
    if (*busy_) options.error("the model is busy with another call (await each call before the next)");
  }

  Napi::Value Parameters(const Napi::CallbackInfo& info) {
    return parameter_list(info.Env(), live(info.Env(), "parameters").parameters());
  }

  Napi::Value AdapterParameters(const Napi::CallbackInfo& info) {
    return parameter_list(info.Env(), live(info.Env(), "adapterParameters").adapter_parameters());
  }

  // setAdaptersEnabled({enabled: boolean}): off, every later call runs the base model alone.
  Napi::Value SetAdaptersEnabled(const Napi::CallbackInfo& info) {
    Options options(info, "setAdaptersEnabled");
    check_idle(options);
    Model& model = live(info.Env(), "setAdaptersEnabled");
    const bool enabled = options.boolean("enabled", true);
    run_sync(options, [&] { model.set_adapters_enabled(enabled); });
    return info.Env().Undefined();
  }

  // mergeAdapters({}) -> Promise<void>: W += s B A into the base, adapters off after.
  Napi::Value MergeAdapters(const Napi::CallbackInfo& info) {
    Options options(info, "mergeAdapters");
    return run(options, [](Model& m) { m.merge_adapters(); });
  }

  static Napi::Value parameter_list(Napi::Env env, const std::vector<model::ParameterSpec>& params) {
    Napi::Array out = Napi::Array::New(env, params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      Napi::Object p = Napi::Object::New(env);
      p.Set("name", params[i].name);
      Napi::Array shape = Napi::Array::New(env, params[i].shape.size());
      for (size_t j = 0; j < params[i].shape.size(); ++j) shape.Set(uint32_t(j), double(params[i].shape[j]));
      p.Set("shape", shape);
      p.Set("decay", params[i].decay);
      out.Set(uint32_t(i), p);
    }
    return out;
  }

  Napi::Value MemoryPlan(const Napi::CallbackInfo& info) {
    return plan_object(info.Env(), live(info.Env(), "memoryPlan").memory_plan());
  }

  Napi::Value OptimizerStep(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), double(live(info.Env(), "optimizerStep").optimizer_step()));
  }

  // stepProfile() -> {clip_s, ..., weight_upload_s} (seconds of the last optimizer step's parts,
  // model/step_profile.h), or null unless the model was created with profileSteps and stepped.
  Napi::Value StepProfile(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    // A step in flight writes the profile: read it only between calls.
    if (*busy_) throw Napi::Error::New(env, "stepProfile: the model is busy with another call (await it first)");
    const model::StepProfile* p = live(env, "stepProfile").step_profile();
    if (!p) return env.Null();
    Napi::Object out = Napi::Object::New(env);
    out.Set("clip_s", p->clip);
    out.Set("device_adamw_s", p->device_adamw);
    out.Set("host_adamw_s", p->host_adamw);
    out.Set("gradient_wait_s", p->gradient_wait);
    out.Set("upload_wait_s", p->upload_wait);
    out.Set("norms_s", p->norms);
    out.Set("gradient_copy_s", p->gradient_copy);
    out.Set("weight_upload_s", p->weight_upload);
    return out;
  }

  // dispose(): frees the model's memory (host and device) now rather than whenever the garbage
  // collector, which cannot see it, gets to the JS object; any later call is an error. Refused
  // while a call runs (that call holds the model).
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    if (*busy_) throw Napi::Error::New(info.Env(), "dispose: the model is busy with another call (await it first)");
    DetachGradientViews();
    model_.reset();
    return info.Env().Undefined();
  }

  // gradientBuffers() -> Float32Array[]: views (no copy) over each trained group's f32 gradient
  // buffer, which data-parallel ranks sum in place (the MPI addon's allReduceSum). Made once per
  // model (the buffers never move); dispose() detaches them, so a view kept past it reads as
  // empty instead of freed memory. CPU model only: the GPU model's gradients are device memory.
  Napi::Value GradientBuffers(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if constexpr (!std::is_same_v<Model, model::MistralModel>) {
      throw Napi::Error::New(env, "gradientBuffers: the GPU model's gradients are device memory, which its ranks sum over NCCL (allReduceGradients, reduceScatterGradients)");
    } else {
      Model& m = live(env, "gradientBuffers");
      if (grad_views_.IsEmpty()) {
        std::vector<typename Model::GradientBuffer> buffers;
        try {
          buffers = m.gradient_buffers();
        } catch (const std::exception& e) {
          throw Napi::Error::New(env, std::string("gradientBuffers: ") + e.what());
        }
        Napi::Array views = Napi::Array::New(env, buffers.size());
        for (size_t i = 0; i < buffers.size(); ++i) {
          Napi::ArrayBuffer memory = Napi::ArrayBuffer::New(env, buffers[i].data, buffers[i].size * sizeof(float));
          views.Set(uint32_t(i), Napi::Float32Array::New(env, buffers[i].size, memory, 0));
        }
        grad_views_ = Napi::Persistent(views);
      }
      return grad_views_.Value();
    }
  }

  void DetachGradientViews() {
    if (!grad_views_.IsEmpty()) {
      Napi::Array views = grad_views_.Value();
      for (uint32_t i = 0; i < views.Length(); ++i) views.Get(i).As<Napi::Float32Array>().ArrayBuffer().Detach();
      grad_views_.Reset();
    }
    if (!weight_views_.IsEmpty()) {
      Napi::Array segments = weight_views_.Value();
      for (uint32_t i = 0; i < segments.Length(); ++i)
        segments.Get(i).As<Napi::Object>().Get("data").As<Napi::TypedArray>().ArrayBuffer().Detach();
      weight_views_.Reset();
    }
  }

  static Napi::Array size_array(Napi::Env env, const std::vector<size_t>& values) {
    Napi::Array out = Napi::Array::New(env, values.size());
    for (size_t i = 0; i < values.size(); ++i) out.Set(uint32_t(i), double(values[i]));
    return out;
  }

  // gradientShardCounts() -> number[][]: per gradient buffer, each rank's element count (ZeRO).
  Napi::Value GradientShardCounts(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Options options(info, "gradientShardCounts");
    check_idle(options);
    std::vector<std::vector<size_t>> counts;
    run_sync(options, [&] { counts = live(env, "gradientShardCounts").gradient_shard_counts(); });
    Napi::Array out = Napi::Array::New(env, counts.size());
    for (size_t i = 0; i < counts.size(); ++i) out.Set(uint32_t(i), size_array(env, counts[i]));
    return out;
  }

  // shardGradSumOfSquares() -> Promise<number>: over this rank's shard of the gradients (ZeRO 2).
  Napi::Value ShardGradSumOfSquares(const Napi::CallbackInfo& info) {
    Options options(info, "shardGradSumOfSquares");
    auto squares = std::make_shared<double>(0.0);
    return run(
        options, [squares](Model& m) { *squares = m.shard_grad_sum_of_squares(); },
        [squares](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *squares); });
  }

  // weightSegments() -> {data: Float32Array | Uint16Array (bf16 bits), counts: number[]}[]: views
  // (no copy) over the runs of the weights the ranks all-gather in place after a sharded step;
  // made once per model, detached by dispose(). CPU model only: the GPU model's weights are
  // device memory, which it all-gathers itself (allGatherWeights).
  Napi::Value WeightSegments(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if constexpr (!std::is_same_v<Model, model::MistralModel>) {
      throw Napi::Error::New(env, "weightSegments: the GPU model's weights are device memory; its ranks all-gather them "
                                  "with allGatherWeights(communicator) (NCCL)");
    } else {
      Model& m = live(env, "weightSegments");
      if (weight_views_.IsEmpty()) {
        std::vector<model::WeightSegment> segments;
        try {
          segments = m.weight_segments();
        } catch (const std::exception& e) {
          throw Napi::Error::New(env, std::string("weightSegments: ") + e.what());
        }
        Napi::Array out = Napi::Array::New(env, segments.size());
        for (size_t i = 0; i < segments.size(); ++i) {
          const model::WeightSegment& s = segments[i];
          Napi::ArrayBuffer memory = Napi::ArrayBuffer::New(env, s.data, s.count * (s.bf16 ? 2 : 4));
          Napi::Object segment = Napi::Object::New(env);
          if (s.bf16) {
            segment.Set("data", Napi::Uint16Array::New(env, s.count, memory, 0));
          } else {
            segment.Set("data", Napi::Float32Array::New(env, s.count, memory, 0));
          }
          segment.Set("counts", size_array(env, s.counts));
          out.Set(uint32_t(i), segment);
        }
        weight_views_ = Napi::Persistent(out);
      }
      return weight_views_.Value();
    }
  }

  // loadWeights({files: string[]}) -> Promise<{unexpected: string[]}>
  Napi::Value LoadWeights(const Napi::CallbackInfo& info) { return Load(info, "loadWeights", &Model::load_weights); }
  // loadAdapters({files: string[]}) -> Promise<{unexpected: string[], absent: string[]}>: PEFT's
  // adapter tensors and saved modules (absent: the saved modules the files do not hold).
  Napi::Value LoadAdapters(const Napi::CallbackInfo& info) {
    Options options(info, "loadAdapters");
    auto files = options.strings("files");
    auto loaded = std::make_shared<model::AdapterLoad>();
    return run(
        options, [files, loaded](Model& m) { *loaded = m.load_adapters(files); },
        [loaded](Napi::Env env) -> Napi::Value {
          Napi::Object out = Napi::Object::New(env);
          out.Set("unexpected", string_array(env, loaded->unexpected));
          out.Set("absent", string_array(env, loaded->absent));
          return out;
        });
  }

  Napi::Value Load(const Napi::CallbackInfo& info, const char* op,
                   std::vector<std::string> (Model::*load)(const std::vector<std::string>&)) {
    Options options(info, op);
    auto files = options.strings("files");
    auto unexpected = std::make_shared<std::vector<std::string>>();
    return run(
        options, [files, unexpected, load](Model& m) { *unexpected = (m.*load)(files); },
        [unexpected](Napi::Env env) -> Napi::Value {
          Napi::Object out = Napi::Object::New(env);
          out.Set("unexpected", string_array(env, *unexpected));
          return out;
        });
  }

  // saveWeights({path, names, dtype: 'F32'|'F16'|'BF16', metadata?}) -> Promise<void>: one
  // safetensors file (the shard plan is lib/model/folder.ts's).
  Napi::Value SaveWeights(const Napi::CallbackInfo& info) {
    Options options(info, "saveWeights");
    const std::string path = options.string("path");
    const std::vector<std::string> names = options.strings("names");
    const std::string dtype = options.string("dtype", "F32");
    if (dtype != "F32" && dtype != "F16" && dtype != "BF16") {
      options.error("'dtype' must be 'F32', 'F16' or 'BF16', got '" + dtype + "'");
    }
    const model::SaveDType save_dtype = dtype == "F32" ? model::SaveDType::F32
                                        : dtype == "F16" ? model::SaveDType::F16
                                                         : model::SaveDType::BF16;
    const auto metadata = options.string_map_or_empty("metadata");
    return run(options, [path, names, save_dtype, metadata](Model& m) {
      m.save_weights(path, names, save_dtype, metadata);
    });
  }

  // Reads a TokenBatch ({inputIds, positionIds, targets, cuSeqlens}: Int32Arrays).
  static model::TokenBatchView read_batch(const Options& o) {
    ArrayView<int32_t> ids = o.i32("inputIds");
    ArrayView<int32_t> positions = o.i32("positionIds");
    ArrayView<int32_t> targets = o.i32("targets");
    ArrayView<int32_t> cu = o.i32("cuSeqlens");
    o.expect_size("positionIds", positions, ids.size);
    o.expect_size("targets", targets, ids.size);
    if (cu.size < 2) o.error("'cuSeqlens' must hold at least 2 offsets");
    return {long(ids.size), ids.data, positions.data, targets.data, cu.data, int(cu.size - 1)};
  }

  Napi::Value RunForward(const Napi::CallbackInfo& info, const char* op, bool keep) {
    Options options(info, op);
    const model::TokenBatchView batch = read_batch(options);
    auto logp = std::make_shared<std::vector<float>>(size_t(batch.tokens));
    return run(
        options,
        [batch, logp, keep](Model& m) {
          if (keep) {
            m.forward(batch, logp->data());
          } else {
            m.logprobs(batch, logp->data());
          }
        },
        logp_result(logp));
  }

  // The promise's value for calls that return per-token log-probs: {logp: Float32Array}.
  static std::function<Napi::Value(Napi::Env)> logp_result(std::shared_ptr<std::vector<float>> logp) {
    return [logp](Napi::Env env) -> Napi::Value {
      Napi::Object out = Napi::Object::New(env);
      out.Set("logp", copy_to_js(env, logp->data(), logp->size()));
      return out;
    };
  }

  // forward(batch) -> Promise<{logp: Float32Array}>, keeping activations for backward.
  Napi::Value Forward(const Napi::CallbackInfo& info) { return RunForward(info, "forward", true); }
  // logprobs(batch) -> Promise<{logp: Float32Array}>, nothing kept.
  Napi::Value Logprobs(const Napi::CallbackInfo& info) { return RunForward(info, "logprobs", false); }

  // nextTokenLogits(batch) -> Promise<{logits: Float32Array}>: [documents, vocab], the logits
  // after each document's last token (greedy decoding).
  Napi::Value NextTokenLogits(const Napi::CallbackInfo& info) {
    Options options(info, "nextTokenLogits");
    const model::TokenBatchView batch = read_batch(options);
    auto logits = std::make_shared<std::vector<float>>();
    return run(
        options,
        [batch, logits](Model& m) {
          logits->resize(size_t(batch.n_docs) * size_t(m.config().vocab_size));
          m.next_token_logits(batch, logits->data());
        },
        [logits](Napi::Env env) -> Napi::Value {
          Napi::Object out = Napi::Object::New(env);
          out.Set("logits", copy_to_js(env, logits->data(), logits->size()));
          return out;
        });
  }

  // backward({dlogp: Float32Array}) -> Promise<void>; dlogp has one entry per token of the
  // batch of the last forward().
  Napi::Value Backward(const Napi::CallbackInfo& info) {
    Options options(info, "backward");
    ArrayView<float> dlogp = options.f32("dlogp");
    return run(options, [dlogp](Model& m) { m.backward(dlogp.data, long(dlogp.size)); });
  }

  // forwardBackward({...batch, dlogp: Float32Array}) -> Promise<{logp: Float32Array}>: forward
  // then backward(dlogp) in one call, for losses whose dlogp is known before the forward (SFT).
  Napi::Value ForwardBackward(const Napi::CallbackInfo& info) {
    Options options(info, "forwardBackward");
    const model::TokenBatchView batch = read_batch(options);
    ArrayView<float> dlogp = options.f32("dlogp");
    options.expect_size("dlogp", dlogp, size_t(batch.tokens));
    auto logp = std::make_shared<std::vector<float>>(size_t(batch.tokens));
    return run(
        options, [batch, dlogp, logp](Model& m) { m.forward_backward(batch, dlogp.data, logp->data()); },
        logp_result(logp));
  }

  Napi::Value ZeroGrad(const Napi::CallbackInfo& info) {
    Options options(info, "zeroGrad");
    return run(options, [](Model& m) { m.zero_grad(); });
  }

  // allReduceGradients(communicator) -> Promise<void>: the GPU model's gradients summed across
  // the ranks of an open NcclCommunicator (nccl_binding.cpp), in place on the device.
  Napi::Value AllReduceGradients(const Napi::CallbackInfo& info) {
    return Nccl(info, "allReduceGradients", NcclWork::AllReduceGradients);
  }
  // reduceScatterGradients(communicator) -> Promise<void>: ZeRO stage 2's gradient reduce-scatter
  // (this rank's range summed), on the device.
  Napi::Value ReduceScatterGradients(const Napi::CallbackInfo& info) {
    return Nccl(info, "reduceScatterGradients", NcclWork::ReduceScatterGradients);
  }
  // allGatherWeights(communicator) -> Promise<void>: after a sharded step, every rank's range of
  // the device weights from its owner (ZeRO stages 1 and 2).
  Napi::Value AllGatherWeights(const Napi::CallbackInfo& info) {
    return Nccl(info, "allGatherWeights", NcclWork::AllGatherWeights);
  }
  Napi::Value Nccl(const Napi::CallbackInfo& info, const char* name, NcclWork which) {
    Options options(info, name);
    if (info.Length() < 1 || !info[0].IsObject()) options.error("expects an NcclCommunicator");
    auto work = nccl_work(options, info[0].As<Napi::Object>(), static_cast<Model*>(nullptr), which);
    return run(options, [work](Model& m) { work(m); });
  }

  // clipAndStep({lr, beta1, beta2, eps, weightDecay, maxGradNorm}) -> Promise<{gradNorm, step}>
  Napi::Value ClipAndStep(const Napi::CallbackInfo& info) {
    Options options(info, "clipAndStep");
    model::AdamWOptions hp;
    hp.lr = options.number("lr");
    hp.beta1 = options.number("beta1", 0.9);
    hp.beta2 = options.number("beta2", 0.999);
    hp.eps = options.number("eps", 1e-8);
    hp.weight_decay = options.number("weightDecay", 0.0);
    hp.max_grad_norm = options.number("maxGradNorm", 0.0);
    // gradSumOfSquares: the global sum of squared gradients, summed across ZeRO stage 2's ranks.
    const bool given = options.has("gradSumOfSquares");
    const double squares = options.number("gradSumOfSquares", 0.0);
    if (given && !(squares >= 0)) options.error("'gradSumOfSquares' must be >= 0");
    auto norm = std::make_shared<double>(0.0);
    auto step = std::make_shared<long>(0);
    return run(
        options,
        [hp, norm, step, given, squares](Model& m) {
          *norm = given ? m.clip_and_step(hp, squares) : m.clip_and_step(hp);
          *step = m.optimizer_step();
        },
        [norm, step](Napi::Env env) -> Napi::Value {
          Napi::Object out = Napi::Object::New(env);
          out.Set("gradNorm", *norm);
          out.Set("step", double(*step));
          return out;
        });
  }

  // saveOptimizerState({path}) / loadOptimizerState({path}): AdamW moments and step count.
  Napi::Value SaveOptimizerState(const Napi::CallbackInfo& info) {
    Options options(info, "saveOptimizerState");
    const std::string path = options.string("path");
    return run(options, [path](Model& m) { m.save_optimizer_state(path); });
  }

  // loadOptimizerState({paths}): the moments of this rank's range from one process's file or any
  // number of ranks' shard files (written by either model).
  Napi::Value LoadOptimizerState(const Napi::CallbackInfo& info) {
    Options options(info, "loadOptimizerState");
    if (options.has("paths")) {
      const std::vector<std::string> paths = options.strings("paths");
      return run(options, [paths](Model& m) { m.load_optimizer_state(paths); });
    }
    const std::string path = options.string("path");
    return run(options, [path](Model& m) { m.load_optimizer_state(path); });
  }

  // saveOptimizerShard({path}): this ZeRO rank's shard file.
  Napi::Value SaveOptimizerShard(const Napi::CallbackInfo& info) {
    Options options(info, "saveOptimizerShard");
    const std::string path = options.string("path");
    return run(options, [path](Model& m) { m.save_optimizer_shard(path); });
  }

  // startGeneration({sequences, maxContext}) -> Promise<void>: a KvCache for `sequences` at once,
  // each up to maxContext positions (model/generation.h), replacing an earlier one.
  Napi::Value StartGeneration(const Napi::CallbackInfo& info) {
    Options options(info, "startGeneration");
    const long sequences = long(options.integer("sequences"));
    const long max_context = long(options.integer("maxContext"));
    if (sequences <= 0 || sequences > 1 << 20) options.error("'sequences' must be in [1, 2^20], got " + std::to_string(sequences));
    if (max_context <= 0) options.error("'maxContext' must be positive, got " + std::to_string(max_context));
    return run(options, [sequences, max_context](Model& m) { m.start_generation(int(sequences), max_context); });
  }

  // acquireSequence() -> slot number, or -1 when every slot is taken.
  Napi::Value AcquireSequence(const Napi::CallbackInfo& info) {
    Options options(info, "acquireSequence");
    check_idle(options);
    Model& model = live(info.Env(), "acquireSequence");
    int slot = -1;
    run_sync(options, [&] { slot = model.acquire_sequence(); });
    return Napi::Number::New(info.Env(), slot);
  }

  // releaseSequence({slot}): the slot is free for another sequence.
  Napi::Value ReleaseSequence(const Napi::CallbackInfo& info) {
    Options options(info, "releaseSequence");
    check_idle(options);
    Model& model = live(info.Env(), "releaseSequence");
    const int slot = int(options.integer("slot"));
    run_sync(options, [&] { model.release_sequence(slot); });
    return info.Env().Undefined();
  }

  // extend({slots, counts, tokens}: Int32Arrays, logits: Float32Array) -> Promise<{logits}>: the
  // new tokens of some sequences (counts[i] for slots[i], laid end to end in tokens); each
  // sequence's next-token logits are written into `logits` ([slots, vocab], the caller's buffer,
  // reused step after step: a fresh 4 MiB array a step at batch 32 cost more in page faults than
  // the step's GEMMs), which stays referenced until the promise settles.
  Napi::Value Extend(const Napi::CallbackInfo& info) {
    Options options(info, "extend");
    ArrayView<int32_t> slots = options.i32("slots");
    ArrayView<int32_t> counts = options.i32("counts");
    ArrayView<int32_t> tokens = options.i32("tokens");
    ArrayView<float> logits = options.f32("logits");
    options.expect_size("counts", counts, slots.size);
    size_t total = 0;
    for (size_t i = 0; i < counts.size; ++i) total += size_t(std::max(counts.data[i], 0));
    options.expect_size("tokens", tokens, total);
    options.expect_size("logits", logits, slots.size * size_t(live(info.Env(), "extend").config().vocab_size));
    auto request = std::make_shared<std::vector<int32_t>>();  // slots, counts, tokens: copied off the JS heap
    request->insert(request->end(), slots.data, slots.data + slots.size);
    request->insert(request->end(), counts.data, counts.data + counts.size);
    request->insert(request->end(), tokens.data, tokens.data + tokens.size);
    const int n = int(slots.size);
    auto held = std::make_shared<Napi::Reference<Napi::Value>>(
        Napi::Persistent(info[0].As<Napi::Object>().Get("logits")));
    float* out = logits.data;
    return run(
        options,
        [request, n, out](Model& m) {
          const int32_t* data = request->data();
          m.extend({n, data, data + n, data + 2 * n}, out);
        },
        [held](Napi::Env env) -> Napi::Value {
          Napi::Object result = Napi::Object::New(env);
          result.Set("logits", held->Value());
          held->Reset();
          return result;
        });
  }

  // getParameter({name}) / getGradient({name}) -> Float32Array copies (for tests and tools).
  Napi::Value GetParameter(const Napi::CallbackInfo& info) {
    return CopyParameter(info, "getParameter", &Model::read_master);
  }
  Napi::Value GetGradient(const Napi::CallbackInfo& info) {
    return CopyParameter(info, "getGradient", &Model::read_gradient);
  }

  Napi::Value CopyParameter(const Napi::CallbackInfo& info, const char* op,
                            void (Model::*read)(const model::ParameterSpec&, float*) const) {
    Options options(info, op);
    check_idle(options);
    Model& model = live(info.Env(), op);
    Napi::Value out;
    run_sync(options, [&] {
      const model::ParameterSpec& p = model.parameter(options.string("name"));
      Napi::Float32Array copy = Napi::Float32Array::New(info.Env(), p.numel);
      (model.*read)(p, copy.Data());
      out = copy;
    });
    return out;
  }
};

template <class Model>
void register_model_class(Napi::Env env, Napi::Object exports) {
  exports.Set("Model", ModelWrap<Model>::Define(env));
  exports.Set("modelMemoryPlan", Napi::Function::New(env, ModelMemoryPlan<Model>, "modelMemoryPlan"));
  exports.Set("generationMemory", Napi::Function::New(env, GenerationMemory<Model>, "generationMemory"));
}

}  // namespace zn::addon
