// The Mistral decoder as one sequence of Backend ops (see decoder.h for the math and the
// buffers). Both models call it; a change here changes both devices.
#include "model/decoder.h"

#include <cmath>

namespace zn::model {

namespace {

size_t slot_index(const DecoderBuffers& B, int l, bool keep) { return keep && B.layers.size() > 1 ? size_t(l) : 0; }

}  // namespace

cpu::AttentionShape Decoder::attention_shape(long tokens) const {
  return {tokens, c_.num_heads, c_.num_kv_heads, c_.head_dim, c_.sliding_window, 1.0f / std::sqrt(float(c_.head_dim))};
}

void Decoder::end_phase(const DecoderBuffers& B, int phase) {
  if (!B.poison || !B.plan || !B.base) return;
  for (const ByteRange& r : B.plan->ended(phase)) ops_.poison(static_cast<char*>(B.base) + r.offset, r.bytes);
}

// ---------------------------------------------------------------------------------------------
// Forward

ConstTensor Decoder::adapter_input(const LoraPair& pair, long N, long in, ConstTensor x, LayerSlot& a,
                                   cpu::DropoutMask* mask) {
  const double p = adapters_->table->config().dropout;
  if (!dropout_ || p == 0) return x;
  *mask = cpu::dropout_mask(p, lora_dropout_key(*dropout_, pair.layer, pair.projection));
  ops_.dropout(N, in, *mask, x, a.lora_x, false);
  return a.lora_x;
}

// y = x W^T + beta y, and with an adapter on W, + s (dropout(x) A^T) B^T: two thin GEMMs
// through [N, r].
void Decoder::project(const ParameterSpec& p, long N, long in, long out, ConstTensor x, float beta, Tensor y,
                      const WeightSource& W, LayerSlot& a) {
  ops_.linear_forward(N, in, out, x, W.weight(p), beta, y);
  const LoraPair* pair = adapters_ ? adapters_->table->pair(p) : nullptr;
  if (!pair) return;
  const LoraConfig& lora = adapters_->table->config();
  const WeightSource& A = *adapters_->weights;
  cpu::DropoutMask mask;
  const ConstTensor ax = adapter_input(*pair, N, in, x, a, &mask);
  ops_.linear_forward(N, in, lora.rank, ax, A.weight(*pair->a), 0.0f, a.lora_t);
  ops_.linear_forward(N, lora.rank, out, a.lora_t, A.weight(*pair->b), 1.0f, y, float(lora.scale()));
}

// With xd = dropout(x) (the forward's mask, drawn again) and t = xd A^T recomputed: dB += s dy^T t
// and dt = s dy B, then dA += dt^T xd, all before the base's dx overwrites x (dx may be x's
// buffer); then dx += dropout'(dt A): dt A itself without dropout, else masked and scaled in
// lora_x first.
void Decoder::project_backward(const ParameterSpec& p, long N, long in, long out, ConstTensor x, ConstTensor dy,
                               Tensor dx, float dx_beta, const WeightSource& W, GradientSink& G, LayerSlot& a) {
  const LoraPair* pair = adapters_ ? adapters_->table->pair(p) : nullptr;
  const long r = pair ? adapters_->table->config().rank : 0;
  cpu::DropoutMask mask;
  ConstTensor ax = x;
  if (pair) {
    const WeightSource& A = *adapters_->weights;
    ax = adapter_input(*pair, N, in, x, a, &mask);
    ops_.linear_forward(N, in, r, ax, A.weight(*pair->a), 0.0f, a.lora_t);
    ops_.linear_backward(N, r, out, a.lora_t, dy, A.weight(*pair->b), a.lora_dt, 0.0f, G.grad(*pair->b),
                         float(adapters_->table->config().scale()));
    ops_.linear_backward(N, in, r, ax, a.lora_dt, A.weight(*pair->a), Tensor{}, 0.0f, G.grad(*pair->a));
  }
  ops_.linear_backward(N, in, out, x, dy, W.weight(p), dx, dx_beta, G.grad(p));
  if (!pair) return;
  const ConstTensor a_weight = adapters_->weights->weight(*pair->a);
  if (ax.data == x.data) {
    ops_.linear_backward(N, in, r, x, a.lora_dt, a_weight, dx, 1.0f, nullptr);
  } else {
    ops_.linear_backward(N, in, r, a.lora_x, a.lora_dt, a_weight, a.lora_x, 0.0f, nullptr);
    ops_.dropout(N, in, mask, a.lora_x, dx, true);
  }
}

// h = x + o_proj(attn).
void Decoder::attention_residual(int l, long N, const float* x, ConstTensor attn, float* h, const WeightSource& W,
                                 LayerSlot& a) {
  const long d = c_.hidden_size;
  ops_.copy(N * d, x, h);
  project(*index_.layers[size_t(l)].o, N, c_.q_dim(), d, attn, 1.0f, f32(h), W, a);
}

// The new tokens' k and v into the cache, then attention over the step's keys.
void Decoder::attend_cached(int l, long N, const CachedStep& step, LayerSlot& a) {
  KvCache& cache = *step.cache;
  const long row = cache.shape().row_elements();
  ops_.scatter_rows(N, row, step.cache_rows, a.k, cache.keys(l));
  ops_.scatter_rows(N, row, step.cache_rows, a.v, cache.values(l));
  const ConstTensor k = step.keys_from_cache ? ConstTensor(cache.keys(l)) : ConstTensor(a.k);
  const ConstTensor v = step.keys_from_cache ? ConstTensor(cache.values(l)) : ConstTensor(a.v);
  ops_.attention_forward(attention_shape(N), step.keys, a.q, k, v, a.attn, nullptr);
}

void Decoder::layer_forward(int l, const DeviceBatch& batch, const float* x, float* out, LayerSlot& a,
                            const WeightSource& W, bool need_output, const CachedStep* cached) {
  const LayerParameters& p = index_.layers[size_t(l)];
  const long N = batch.tokens, d = c_.hidden_size, qd = c_.q_dim(), kvd = c_.kv_dim();
  const long ffn = c_.intermediate_size;

  ops_.rmsnorm_forward(N, d, c_.rms_norm_eps, f32(x), W.norm_weight(*p.input_norm), a.norm1, a.rstd1);
  project(*p.q, N, d, qd, a.norm1, 0.0f, a.q, W, a);
  project(*p.k, N, d, kvd, a.norm1, 0.0f, a.k, W, a);
  project(*p.v, N, d, kvd, a.norm1, 0.0f, a.v, W, a);
  ops_.rope_forward(N, c_.num_heads, c_.head_dim, c_.rope_theta, batch.position_ids, a.q);
  ops_.rope_forward(N, c_.num_kv_heads, c_.head_dim, c_.rope_theta, batch.position_ids, a.k);
  if (cached) {
    attend_cached(l, N, *cached, a);
  } else {
    ops_.attention_forward(attention_shape(N), a.q, a.k, a.v, batch, a.attn, a.lse);
  }
  float* h = a.h ? a.h : out;  // without a buffer of its own, the MLP adds into h in place
  attention_residual(l, N, x, a.attn, h, W, a);

  ops_.rmsnorm_forward(N, d, c_.rms_norm_eps, f32(h), W.norm_weight(*p.post_norm), a.norm2, a.rstd2);
  project(*p.gate, N, d, ffn, a.norm2, 0.0f, a.gate, W, a);
  project(*p.up, N, d, ffn, a.norm2, 0.0f, a.up, W, a);
  if (need_output || !recompute_.mlp_act) ops_.swiglu_forward(N * ffn, a.gate, a.up, a.act);
  if (!need_output) return;  // recomputation for backward: down_proj's output is not needed
  if (h != out) ops_.copy(N * d, h, out);
  project(*p.down, N, ffn, d, a.act, 1.0f, f32(out), W, a);
}

void Decoder::run_layers(const DeviceBatch& batch, DecoderBuffers& B, const WeightSource& W, bool keep,
                         const CachedStep* cached) {
  const long N = batch.tokens, d = c_.hidden_size;
  auto residual = [&](int l) { return B.residual[keep ? size_t(l) : size_t(l % 2)]; };
  ops_.embedding_forward(N, d, c_.vocab_size, batch.input_ids, W.weight(*index_.embed), f32(residual(0)));
  end_phase(B, phases_.embed());
  for (int l = 0; l < c_.num_layers; ++l) {
    layer_forward(l, batch, residual(l), residual(l + 1), B.layers[slot_index(B, l, keep)], W, true, cached);
    end_phase(B, phases_.forward(l));
  }
  ops_.rmsnorm_forward(N, d, c_.rms_norm_eps, f32(residual(c_.num_layers)), W.norm_weight(*index_.final_norm),
                       B.final_norm, B.final_rstd);
  end_phase(B, phases_.final_norm());
}

void Decoder::trunk_forward(const DeviceBatch& batch, DecoderBuffers& B, const WeightSource& W, bool keep) {
  run_layers(batch, B, W, keep, nullptr);
}

void Decoder::forward_cached(const DeviceBatch& batch, const CachedStep& step, DecoderBuffers& B,
                             const WeightSource& W) {
  run_layers(batch, B, W, false, &step);
}

void Decoder::forward(const DeviceBatch& batch, DecoderBuffers& B, const WeightSource& W, bool keep, float* logp) {
  trunk_forward(batch, B, W, keep);
  ops_.logprob_forward({batch.tokens, c_.hidden_size, c_.vocab_size}, B.final_norm, W.weight(*index_.lm_head),
                       batch.targets, logp, B.logit_lse, B.head_chunks);
  end_phase(B, phases_.head());
}

// ---------------------------------------------------------------------------------------------
// Backward

// Layer l's q, k, v and attention output as layer_forward computed them (n1 from the same
// rmsnorm), into the buffers every layer shares.
void Decoder::recompute_attention(int l, const DeviceBatch& batch, const float* x, LayerSlot& a, const WeightSource& W) {
  const LayerParameters& p = index_.layers[size_t(l)];
  const long N = batch.tokens, d = c_.hidden_size, qd = c_.q_dim(), kvd = c_.kv_dim();
  ops_.rmsnorm_forward(N, d, c_.rms_norm_eps, f32(x), W.norm_weight(*p.input_norm), a.norm1, a.rstd1);
  project(*p.q, N, d, qd, a.norm1, 0.0f, a.q, W, a);
  project(*p.k, N, d, kvd, a.norm1, 0.0f, a.k, W, a);
  project(*p.v, N, d, kvd, a.norm1, 0.0f, a.v, W, a);
  ops_.rope_forward(N, c_.num_heads, c_.head_dim, c_.rope_theta, batch.position_ids, a.q);
  ops_.rope_forward(N, c_.num_kv_heads, c_.head_dim, c_.rope_theta, batch.position_ids, a.k);
  ops_.attention_forward(attention_shape(N), a.q, a.k, a.v, batch, a.attn, a.lse);
}

// Layer l's gate and up as layer_forward computed them: the lm_head's panel is planned over the
// top layer's region (DecoderBuffers::head_overwrites_top_mlp), and with Recompute::shared_mlp
// every layer's share one region, so the backward rebuilds them.
void Decoder::recompute_mlp_inputs(int l, long N, const float* h, LayerSlot& a, const WeightSource& W) {
  const LayerParameters& p = index_.layers[size_t(l)];
  const long d = c_.hidden_size, ffn = c_.intermediate_size;
  ops_.rmsnorm_forward(N, d, c_.rms_norm_eps, f32(h), W.norm_weight(*p.post_norm), a.norm2, a.rstd2);
  project(*p.gate, N, d, ffn, a.norm2, 0.0f, a.gate, W, a);
  project(*p.up, N, d, ffn, a.norm2, 0.0f, a.up, W, a);
}

// On entry B.dres = d loss / d (layer output); on exit d loss / d (layer input x).
void Decoder::layer_backward(int l, const DeviceBatch& batch, const float* x, const float* h, LayerSlot& a,
                             DecoderBuffers& B, const WeightSource& W, GradientSink& G) {
  const LayerParameters& p = index_.layers[size_t(l)];
  const long N = batch.tokens, d = c_.hidden_size, qd = c_.q_dim(), kvd = c_.kv_dim();
  const long ffn = c_.intermediate_size;
  const float eps = c_.rms_norm_eps;
  // The GEMMs read dres through its operand copy, which add_into refreshes with each update.
  const Tensor rounded = B.dres_operand.data != B.dres ? B.dres_operand : Tensor{};

  // MLP: out = h + down(silu(gate(n2)) * up(n2)).
  if (recompute_.mlp_act) ops_.swiglu_forward(N * ffn, a.gate, a.up, a.act);
  project_backward(*p.down, N, ffn, d, a.act, B.dres_operand, B.dact, 0.0f, W, G, a);
  ops_.swiglu_backward(N * ffn, a.gate, a.up, B.dact, a.dgate, a.dup);
  if (recompute_.norms) ops_.rmsnorm_forward(N, d, eps, f32(h), W.norm_weight(*p.post_norm), a.norm2, a.rstd2);
  project_backward(*p.gate, N, d, ffn, a.norm2, a.dgate, f32(B.dnorm), 0.0f, W, G, a);
  project_backward(*p.up, N, d, ffn, a.norm2, a.dup, f32(B.dnorm), 1.0f, W, G, a);
  ops_.rmsnorm_backward(N, d, f32(h), W.norm_weight(*p.post_norm), a.rstd2, f32(B.dnorm), f32(B.dnorm_x),
                        G.grad(*p.post_norm));
  ops_.add_into(N * d, B.dnorm_x, B.dres, rounded);  // now d loss / d h

  // Attention: h = x + o(attention(rope(q(n1)), rope(k(n1)), v(n1))).
  project_backward(*p.o, N, qd, d, a.attn, B.dres_operand, B.dattn, 0.0f, W, G, a);
  ops_.attention_backward(attention_shape(N), a.q, a.k, a.v, batch, a.attn, a.lse, B.dattn, a.dq, a.dk, a.dv,
                          B.attention_backward);
  ops_.rope_backward(N, c_.num_heads, c_.head_dim, c_.rope_theta, batch.position_ids, a.dq);
  ops_.rope_backward(N, c_.num_kv_heads, c_.head_dim, c_.rope_theta, batch.position_ids, a.dk);
  if (recompute_.norms) ops_.rmsnorm_forward(N, d, eps, f32(x), W.norm_weight(*p.input_norm), a.norm1, a.rstd1);
  project_backward(*p.q, N, d, qd, a.norm1, a.dq, f32(B.dnorm), 0.0f, W, G, a);
  project_backward(*p.k, N, d, kvd, a.norm1, a.dk, f32(B.dnorm), 1.0f, W, G, a);
  project_backward(*p.v, N, d, kvd, a.norm1, a.dv, f32(B.dnorm), 1.0f, W, G, a);
  ops_.rmsnorm_backward(N, d, f32(x), W.norm_weight(*p.input_norm), a.rstd1, f32(B.dnorm), f32(B.dnorm_x),
                        G.grad(*p.input_norm));
  ops_.add_into(N * d, B.dnorm_x, B.dres, rounded);  // now d loss / d x
}

void Decoder::backward_layers(const DeviceBatch& batch, DecoderBuffers& B, const WeightSource& W,
                              GradientSink& G, ConstTensor dnormed, bool gradient_checkpointing) {
  const long N = batch.tokens, d = c_.hidden_size;
  const int top = c_.num_layers - 1;
  ops_.rmsnorm_backward(N, d, f32(B.residual[size_t(c_.num_layers)]), W.norm_weight(*index_.final_norm),
                        B.final_rstd, dnormed, f32(B.dres), G.grad(*index_.final_norm));
  if (B.dres_operand.data != B.dres) ops_.round(N * d, B.dres, B.dres_operand);
  end_phase(B, phases_.final_norm_backward());
  for (int l = top; l >= 0; --l) {
    const float* x = B.residual[size_t(l)];
    // The layer's output x_{l+1} is dead now that the layer above (or the final norm) has done
    // its backward: h is rebuilt there when it has no buffer of its own.
    float* out = B.residual[size_t(l) + 1];
    LayerSlot& a = B.layers[slot_index(B, l, true)];
    // With checkpointing the one slot still holds the top layer's activations from forward.
    if (gradient_checkpointing && l != top) {
      layer_forward(l, batch, x, out, a, W, false);
    } else if (recompute_.h) {
      if (recompute_.shared_attention && l != top) recompute_attention(l, batch, x, a, W);
      attention_residual(l, N, x, a.attn, out, W, a);
      if (recompute_.shared_mlp || (B.head_overwrites_top_mlp && l == top)) recompute_mlp_inputs(l, N, out, a, W);
    }
    layer_backward(l, batch, x, a.h ? a.h : out, a, B, W, G);
    end_phase(B, phases_.backward(l));
  }
}

void Decoder::backward(const DeviceBatch& batch, DecoderBuffers& B, const WeightSource& W, GradientSink& G,
                       const float* dlogp, bool gradient_checkpointing) {
  const long N = batch.tokens, d = c_.hidden_size;
  if (recompute_.norms) {
    ops_.rmsnorm_forward(N, d, c_.rms_norm_eps, f32(B.residual[size_t(c_.num_layers)]),
                         W.norm_weight(*index_.final_norm), B.final_norm, B.final_rstd);
  }
  ops_.logprob_backward({N, d, c_.vocab_size}, B.final_norm, W.weight(*index_.lm_head), batch.targets, B.logit_lse,
                        dlogp, B.dnorm, G.grad(*index_.lm_head), B.head_chunks);
  end_phase(B, phases_.head_backward());
  backward_layers(batch, B, W, G, f32(B.dnorm), gradient_checkpointing);
}

void Decoder::forward_backward(const DeviceBatch& batch, DecoderBuffers& B, const WeightSource& W,
                               GradientSink& G, const float* dlogp, float* logp, bool gradient_checkpointing) {
  trunk_forward(batch, B, W, true);
  float* dhidden = B.head_overwrites_top_mlp ? static_cast<float*>(B.final_norm.data) : B.dnorm;
  ops_.logprob_forward_backward({batch.tokens, c_.hidden_size, c_.vocab_size}, B.final_norm,
                                W.weight(*index_.lm_head), batch.targets, dlogp, logp, dhidden,
                                G.grad(*index_.lm_head), B.head);
  end_phase(B, phases_.head());
  backward_layers(batch, B, W, G, f32(dhidden), gradient_checkpointing);
}

}  // namespace zn::model
