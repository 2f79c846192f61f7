// The Mistral decoder, written once: forward, backward (with recomputation) and the log-prob
// head as a plain sequence of Backend ops (model/backend.h), for the CPU model (mistral.cpp) and
// the CUDA model (mistral_cuda.cu) alike. The math is mistral.h's:
//   h   = x + o_proj(attention(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rmsnorm1(x)
//   out = h + down_proj(silu(gate_proj(n2)) * up_proj(n2)),                       n2 = rmsnorm2(h)
//
// What differs between the backends is data, not code: where each activation lives
// (DecoderBuffers, laid out by each model's plan) and which of them the backward recomputes
// instead of keeping (Recompute). The CPU keeps what a GEMM or attention produced and recomputes
// what elementwise work gives back exactly (the norm outputs, silu(gate) * up, and
// h = x + o_proj(attn) in the next layer's dead input buffer; k and v too, in one pair of buffers
// for all layers), so its buffers alias heavily; the GPU keeps everything per layer, in bf16
// where a GEMM reads it. Recomputed values are the forward's bits (the same ops on the same
// inputs), so either policy gives the same gradients.
#pragma once
#include <utility>
#include <vector>

#include "model/backend.h"
#include "model/buffer_plan.h"
#include "model/kv_cache.h"
#include "model/lora.h"
#include "model/parameters.h"

namespace zn::model {

// The phases of a step in the order they run, as the buffer tables' lifetimes count them
// (buffer_plan.h). A call runs a stretch of them: a forward embed .. head (the head: the log-prob
// forward, forward_backward's one-pass head, or the model reading the last rows), a backward
// head_backward .. backward(0), forward_backward all but head_backward; the model's embedding
// backward is end().
struct StepPhases {
  int layers;
  int embed() const { return 0; }
  int forward(int l) const { return 1 + l; }
  int final_norm() const { return layers + 1; }
  int head() const { return layers + 2; }
  int head_backward() const { return layers + 3; }
  int final_norm_backward() const { return layers + 4; }
  int backward(int l) const { return layers + 5 + (layers - 1 - l); }
  int end() const { return 2 * layers + 5; }

  // The layer inputs x_0 .. x_L: x_i is written by layer i - 1 (x_0 by the embedding) and read
  // until layer i - 1's backward (which may rebuild its h there); a frozen model's two
  // ping-pong buffers until the final norm.
  Lifetime residual(size_t i, bool trainable) const {
    const int first = i == 0 ? embed() : forward(int(i) - 1);
    return {first, !trainable ? final_norm() : i == 0 ? backward(0) : backward(int(i) - 1)};
  }
  // Layer slot i of `slots`: what its layer keeps from its forward to its backward (one slot
  // serves every layer; a frozen model's until the last layer's forward).
  Lifetime slot(size_t i, size_t slots, bool trainable) const {
    if (slots == 1) return {forward(0), trainable ? backward(0) : forward(layers - 1)};
    return {forward(int(i)), backward(int(i))};
  }
};

// What the backward rebuilds instead of keeping from the forward.
struct Recompute {
  bool norms = false;      // n1, n2 and the final norm's output (rmsnorm_forward again)
  bool mlp_act = false;    // act = silu(gate) * up
  bool h = false;          // h = x + o_proj(attn), into the layer's output buffer
  bool shared_attention = false;  // every layer's q, k, v and attention output live in one set of
                                 // buffers: recomputed below the top
  bool shared_mlp = false; // every layer's gate, up live in one region: recomputed in each backward
};

// One layer's activations (a slot; one slot serves every layer when nothing is kept or with
// gradient checkpointing). Pointers may alias each other and DecoderBuffers' shared buffers as
// the layout decides; a recomputed value's pointer is where the recomputation writes it.
struct LayerSlot {
  Tensor norm1;  // rmsnorm1(x)         [N, d]
  float* rstd1;  // 1 / rms(x)          [N]
  Tensor q;      // rope(q_proj(n1))    [N, Hq * D]
  Tensor k;      // rope(k_proj(n1))    [N, Hkv * D]
  Tensor v;      // v_proj(n1)          [N, Hkv * D]
  Tensor attn;   // attention output    [N, Hq * D]
  float* lse;    // attention lse       [Hq, N]
  float* h;      // x + o_proj(attn)    [N, d] f32; null: h is built in the layer's output buffer
  Tensor norm2;  // rmsnorm2(h)         [N, d]
  float* rstd2;  // 1 / rms(h)          [N]
  Tensor gate;   // gate_proj(n2)       [N, ffn]
  Tensor up;     // up_proj(n2)         [N, ffn]
  Tensor act;    // silu(gate) * up     [N, ffn]
  // Backward scratch: the MLP's and the attention's input gradients (the CPU puts them over
  // this slot's gate and up, the GPU in buffers of their own).
  Tensor dgate, dup;     // [N, ffn]
  Tensor dq, dk, dv;     // [N, Hq * D], [N, Hkv * D] x 2
  // With adapters: a projection's x A^T and d loss / d (x A^T), [N, r] (one pair for all
  // projections: each is recomputed where the backward needs it).
  Tensor lora_t, lora_dt;
  // With lora_dropout while training: dropout(x), the A-GEMM's input [N, in], and in the backward
  // (dt A) before the mask's backward; [N, the widest projection input] (null otherwise).
  Tensor lora_x;
};

struct DecoderBuffers {
  std::vector<float*> residual;  // layer inputs x_0 .. x_L, f32 (two, ping-pong, if not trainable)
  std::vector<LayerSlot> layers;
  Tensor final_norm;   // the lm_head's input  [N, d]
  float* final_rstd;   // [N]
  float* logit_lse;    // log-sum-exp of the logits  [N]
  // Backward (trainable only).
  float* dres;         // d loss / d residual stream  [N, d] f32
  Tensor dres_operand; // dres as GEMMs read it: dres itself, or its bf16 rounding
  float* dnorm;        // d loss / d (a norm's output), sum of the GEMMs' dx  [N, d] f32
  float* dnorm_x;      // rmsnorm backward's dx  [N, d] f32
  Tensor dattn;        // [N, Hq * D]
  Tensor dact;         // [N, ffn]
  // The lm_head's workspace. With head_overwrites_top_mlp it spans the top slot's gate and up
  // (which every backward then recomputes), act and dres, so the one-pass head writes dhidden
  // over its own input (the final norm) instead of into dnorm.
  Workspace head;
  bool head_overwrites_top_mlp = false;
  // The two-pass head's (forward, then backward) chunks: the GPU's are head; empty: the kernels
  // allocate their own.
  Workspace head_chunks;
  Workspace attention_backward;
  // The table these buffers were laid out from, and where. With poison (the models set it in
  // debug builds: poison_ended_buffers()), the decoder fills each entry's bytes with NaN when its
  // lifetime ends.
  const BufferPlan* plan = nullptr;
  void* base = nullptr;
  bool poison = false;
};

// The parameters as the kernels read them. A forward needs nothing else of a model, so a
// generator or a frozen reference runs on weights alone.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual ConstTensor weight(const ParameterSpec& p) const = 0;       // GEMM / lookup operand
  virtual const float* norm_weight(const ParameterSpec& p) const = 0;  // f32 in every mode
};

// Where a backward accumulates gradients: a train state (one per trained parameter group). A
// parameter it does not train gives null, and the backward then computes no weight gradient for
// it (only the input gradients that flow on through it).
class GradientSink {
 public:
  virtual ~GradientSink() = default;
  virtual float* grad(const ParameterSpec& p) = 0;  // dense f32, accumulated into; null: frozen
};

// Several train states as one sink (say LoRA's adapters and a fully trained lm_head): each
// parameter's gradient goes to the state whose group holds it.
class GradientSinks final : public GradientSink {
 public:
  explicit GradientSinks(std::vector<GradientSink*> sinks) : sinks_(std::move(sinks)) {}
  float* grad(const ParameterSpec& p) override {
    for (GradientSink* sink : sinks_) {
      if (float* g = sink->grad(p)) return g;
    }
    return nullptr;
  }

 private:
  std::vector<GradientSink*> sinks_;
};

// LoRA adapters (model/lora.h) on the targeted projections, read from weights of their own; their
// gradients go to the sink the backward is given, whose train state holds the adapter group.
struct Adapters {
  const LoraTable* table = nullptr;
  const WeightSource* weights = nullptr;
};

// A forward over new tokens that continue sequences held in a KvCache (generation). Each layer
// writes the new tokens' k and v to the cache rows cache_rows names (-1: not kept), then the
// queries attend over `keys`: rows of the cache after those writes, or, with keys_from_cache
// false (fresh sequences, whose prompts may be longer than the cache), the step's own k and v,
// of which the cache keeps the last rows. Arrays live where the backend's kernels run.
struct CachedStep {
  KvCache* cache = nullptr;
  const int32_t* cache_rows = nullptr;  // [tokens]
  cpu::AttentionSequences keys{};
  bool keys_from_cache = true;
};

class Decoder {
 public:
  // index: the parameter index the weights and gradients are looked up by.
  Decoder(const MistralConfig& config, const ParameterIndex& index, Backend& backend, Recompute recompute)
      : c_(config), index_(index), ops_(backend), recompute_(recompute), phases_{config.num_layers} {}

  // Embedding, layers and final norm into B.final_norm; with keep, every layer's activations
  // for backward (else two residual buffers and one slot serve all layers).
  void trunk_forward(const DeviceBatch& batch, DecoderBuffers& B, const WeightSource& W, bool keep);
  // trunk_forward over new tokens of cached sequences (keep false: two residual buffers and one
  // slot); the final norm of every new token ends in B.final_norm.
  void forward_cached(const DeviceBatch& batch, const CachedStep& step, DecoderBuffers& B, const WeightSource& W);
  // trunk_forward, then logp per token (0 where the target is -100).
  void forward(const DeviceBatch& batch, DecoderBuffers& B, const WeightSource& W, bool keep, float* logp);
  // After forward(keep): the head's backward from dlogp, then the layers' (backward_layers).
  void backward(const DeviceBatch& batch, DecoderBuffers& B, const WeightSource& W, GradientSink& G,
                const float* dlogp, bool gradient_checkpointing);
  // trunk_forward(keep), then the head's forward and backward in one pass, then the layers'.
  void forward_backward(const DeviceBatch& batch, DecoderBuffers& B, const WeightSource& W, GradientSink& G,
                        const float* dlogp, float* logp, bool gradient_checkpointing);
  // After either: B.dres holds d loss / d (embedding output); the embedding's gradient is the
  // owner's (its storage differs: rows on the CPU, dense on the GPU).

  // Every later call adds the adapters' term to the projections they target; null: the base
  // model alone (a fresh adapter's DPO reference is the same weights with the adapters off).
  void set_adapters(const Adapters* adapters) { adapters_ = adapters; }
  // The training forward the next calls belong to (and the backward that follows): the adapters'
  // input goes through lora_dropout with this draw's masks. Null (evaluation: scoring, reference
  // log-probs, generation): no dropout, as PEFT's modules in eval mode.
  void set_dropout(const LoraDropoutDraw* draw) { dropout_ = draw; }

 private:
  // y = x W^T + beta y, plus the adapter's s (x A^T) B^T when p has one (a.lora_t: scratch).
  void project(const ParameterSpec& p, long N, long in, long out, ConstTensor x, float beta, Tensor y,
               const WeightSource& W, LayerSlot& a);
  // The gradients of project(): dW (when trained), dA and dB (through the sink), and dx = dy W +
  // dx_beta dx + the adapter's s (dy B) A. x is read before dx is written (dx may be x's buffer).
  void project_backward(const ParameterSpec& p, long N, long in, long out, ConstTensor x, ConstTensor dy, Tensor dx,
                        float dx_beta, const WeightSource& W, GradientSink& G, LayerSlot& a);
  // The adapter's input: x, or dropout(x) in a.lora_x when a draw is set (mask: its mask then).
  ConstTensor adapter_input(const LoraPair& pair, long N, long in, ConstTensor x, LayerSlot& a,
                            cpu::DropoutMask* mask);
  void layer_forward(int l, const DeviceBatch& batch, const float* x, float* out, LayerSlot& a,
                     const WeightSource& W, bool need_output, const CachedStep* cached = nullptr);
  void run_layers(const DeviceBatch& batch, DecoderBuffers& B, const WeightSource& W, bool keep,
                  const CachedStep* cached);
  void attend_cached(int l, long N, const CachedStep& step, LayerSlot& a);
  void layer_backward(int l, const DeviceBatch& batch, const float* x, const float* h, LayerSlot& a,
                      DecoderBuffers& B, const WeightSource& W, GradientSink& G);
  // From dnormed = d loss / d (final norm output) down to d loss / d (embedding output) in B.dres.
  void backward_layers(const DeviceBatch& batch, DecoderBuffers& B, const WeightSource& W, GradientSink& G,
                       ConstTensor dnormed, bool gradient_checkpointing);
  void attention_residual(int l, long N, const float* x, ConstTensor attn, float* h, const WeightSource& W,
                          LayerSlot& a);
  void recompute_attention(int l, const DeviceBatch& batch, const float* x, LayerSlot& a, const WeightSource& W);
  void recompute_mlp_inputs(int l, long N, const float* h, LayerSlot& a, const WeightSource& W);
  cpu::AttentionShape attention_shape(long tokens) const;
  // With B.poison: NaN over what B's table says ends with this phase.
  void end_phase(const DecoderBuffers& B, int phase);

  const MistralConfig& c_;
  const ParameterIndex& index_;
  Backend& ops_;
  Recompute recompute_;
  StepPhases phases_;
  const Adapters* adapters_ = nullptr;
  const LoraDropoutDraw* dropout_ = nullptr;
};

}  // namespace zn::model
