// The Mistral model against a float64 reference written here: a naive forward of the whole
// model (embedding, RMSNorm, HF rotate-half RoPE, GQA with the sliding window per document,
// SwiGLU MLP, log-softmax), its finite-difference gradient, and the model's own invariants
// (checkpointing, packing, weight decay mask, clipping, optimizer state round trip, errors).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/memory.h"
#include "harness.h"
#include "kernels/cpu/adamw.h"
#include "model/mistral.h"
#include "model/safetensors.h"
#include "tests/temp_file.h"

using namespace zn;
using namespace zn::model;

namespace {

using Params = std::map<std::string, std::vector<double>>;

// Not a parameter: the pad row as the embedding lookup sees it (see reference_logp).
constexpr const char* kFrozenPadRow = "frozen pad row";

using zn::test::TempFile;

MistralConfig tiny_config(bool tied) {
  MistralConfig c;
  c.vocab_size = 13;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 4;  // q_dim 16 != hidden_size
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 1e6f;
  c.sliding_window = 3;
  c.tie_word_embeddings = tied;
  c.pad_token_id = 2;
  return c;
}

// Random f32 weights (the model's exact inputs), norms near 1.
Params random_params(const MistralConfig& c) {
  Params params;
  for (const ParameterSpec& p : parameter_table(c)) {
    const bool norm = p.shape.size() == 1;
    const double scale = norm ? 0.3 : p.name.find("embed") != std::string::npos ? 0.7 : 1.2 / std::sqrt(double(p.shape[1]));
    std::vector<float> w = test::random_f32(p.numel, float(scale));
    if (norm) {
      for (float& x : w) x += 1.0f;
    }
    params[p.name] = test::to_f64(w);
  }
  return params;
}

struct Batch {
  std::vector<int32_t> ids, positions, targets, cu;
  TokenBatchView view() const {
    return {long(ids.size()), ids.data(), positions.data(), targets.data(), cu.data(), int(cu.size()) - 1};
  }
};

// Documents of the given lengths, random ids (some the pad id), targets = next token with a
// few masked, -100 at each document's end.
Batch random_batch(const MistralConfig& c, const std::vector<int>& lengths) {
  Batch b;
  b.cu.push_back(0);
  std::uniform_int_distribution<int> token(0, int(c.vocab_size) - 1);
  std::uniform_real_distribution<double> unit(0, 1);
  for (int len : lengths) {
    const size_t start = b.ids.size();
    for (int i = 0; i < len; ++i) {
      b.ids.push_back(i == 1 ? int32_t(c.pad_token_id) : token(test::rng()));
      b.positions.push_back(i);
    }
    for (int i = 0; i < len; ++i) {
      const bool last = i + 1 == len;
      b.targets.push_back(last || unit(test::rng()) < 0.2 ? -100 : b.ids[start + size_t(i) + 1]);
    }
    b.cu.push_back(int32_t(b.ids.size()));
  }
  return b;
}

// ----- float64 reference -------------------------------------------------------------------

using Matrix = std::vector<double>;  // row-major

// y[N, out] = x[N, in] · W[out, in]ᵀ
Matrix linear(const Matrix& x, const std::vector<double>& w, long N, long in, long out) {
  Matrix y(size_t(N * out), 0.0);
  for (long n = 0; n < N; ++n)
    for (long o = 0; o < out; ++o) {
      double s = 0;
      for (long i = 0; i < in; ++i) s += x[size_t(n * in + i)] * w[size_t(o * in + i)];
      y[size_t(n * out + o)] = s;
    }
  return y;
}

Matrix rmsnorm(const Matrix& x, const std::vector<double>& w, long N, long d, double eps) {
  Matrix y(x.size());
  for (long n = 0; n < N; ++n) {
    double ms = 0;
    for (long j = 0; j < d; ++j) ms += x[size_t(n * d + j)] * x[size_t(n * d + j)];
    const double r = 1.0 / std::sqrt(ms / double(d) + eps);
    for (long j = 0; j < d; ++j) y[size_t(n * d + j)] = w[size_t(j)] * x[size_t(n * d + j)] * r;
  }
  return y;
}

void rope(Matrix& x, long N, int H, int D, double theta, const std::vector<int32_t>& pos) {
  for (long t = 0; t < N; ++t)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < D / 2; ++i) {
        const double angle = pos[size_t(t)] * std::pow(theta, -2.0 * i / D);
        double* r = &x[size_t((t * H + h) * D)];
        const double a = r[i], b = r[i + D / 2];
        r[i] = a * std::cos(angle) - b * std::sin(angle);
        r[i + D / 2] = b * std::cos(angle) + a * std::sin(angle);
      }
}

Matrix attention(const Matrix& q, const Matrix& k, const Matrix& v, const MistralConfig& c,
                 const std::vector<int32_t>& cu) {
  const int Hq = c.num_heads, Hk = c.num_kv_heads, D = c.head_dim;
  const long N = cu.back();
  Matrix out(size_t(N * Hq * D), 0.0);
  for (size_t doc = 0; doc + 1 < cu.size(); ++doc)
    for (long i = cu[doc]; i < cu[doc + 1]; ++i)
      for (int h = 0; h < Hq; ++h) {
        const int kh = h / (Hq / Hk);
        std::vector<double> score;
        std::vector<long> keys;
        for (long j = cu[doc]; j <= i; ++j) {
          if (c.sliding_window > 0 && i - j >= c.sliding_window) continue;  // HF: i - w < j
          double s = 0;
          for (int x = 0; x < D; ++x) s += q[size_t((i * Hq + h) * D + x)] * k[size_t((j * Hk + kh) * D + x)];
          score.push_back(s / std::sqrt(double(D)));
          keys.push_back(j);
        }
        const double m = *std::max_element(score.begin(), score.end());
        double z = 0;
        for (double s : score) z += std::exp(s - m);
        for (size_t n = 0; n < keys.size(); ++n)
          for (int x = 0; x < D; ++x)
            out[size_t((i * Hq + h) * D + x)] += std::exp(score[n] - m) / z * v[size_t((keys[n] * Hk + kh) * D + x)];
      }
  return out;
}

// A projection's output y = x W^T, to which a reference with adapters adds its term (layer l,
// module name such as "q_proj").
using AdapterTerm = std::function<void(int l, const std::string& module, const Matrix& x, long N, long in, long out,
                                       Matrix& y)>;

std::vector<double> reference_logp(const MistralConfig& c, const Params& P, const Batch& b,
                                   const AdapterTerm& adapter = nullptr) {
  const long N = long(b.ids.size()), d = c.hidden_size, ffn = c.intermediate_size;
  Matrix x(size_t(N * d));
  // nn.Embedding(padding_idx): the pad row's lookup is a constant (no gradient through it), so
  // the pad token reads a frozen copy of its row that finite differences do not perturb.
  const std::vector<double>& table = P.at("model.embed_tokens.weight");
  const std::vector<double> pad_row(table.begin() + c.pad_token_id * d, table.begin() + (c.pad_token_id + 1) * d);
  const std::vector<double>& frozen = P.count(kFrozenPadRow) ? P.at(kFrozenPadRow) : pad_row;
  for (long t = 0; t < N; ++t)
    for (long j = 0; j < d; ++j) {
      const int32_t id = b.ids[size_t(t)];
      x[size_t(t * d + j)] = id == c.pad_token_id ? frozen[size_t(j)] : table[size_t(id * d + j)];
    }
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    auto project = [&](const std::string& module, const std::string& block, const Matrix& in_x, long in, long out) {
      Matrix y = linear(in_x, P.at(p + block + "." + module + ".weight"), N, in, out);
      if (adapter) adapter(l, module, in_x, N, in, out, y);
      return y;
    };
    Matrix n1 = rmsnorm(x, P.at(p + "input_layernorm.weight"), N, d, c.rms_norm_eps);
    Matrix q = project("q_proj", "self_attn", n1, d, c.q_dim());
    Matrix k = project("k_proj", "self_attn", n1, d, c.kv_dim());
    Matrix v = project("v_proj", "self_attn", n1, d, c.kv_dim());
    rope(q, N, c.num_heads, c.head_dim, c.rope_theta, b.positions);
    rope(k, N, c.num_kv_heads, c.head_dim, c.rope_theta, b.positions);
    Matrix o = project("o_proj", "self_attn", attention(q, k, v, c, b.cu), c.q_dim(), d);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    Matrix n2 = rmsnorm(x, P.at(p + "post_attention_layernorm.weight"), N, d, c.rms_norm_eps);
    Matrix gate = project("gate_proj", "mlp", n2, d, ffn);
    Matrix up = project("up_proj", "mlp", n2, d, ffn);
    for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
    Matrix down = project("down_proj", "mlp", gate, ffn, d);
    for (size_t i = 0; i < x.size(); ++i) x[i] += down[i];
  }
  Matrix h = rmsnorm(x, P.at("model.norm.weight"), N, d, c.rms_norm_eps);
  const auto& head = P.at(c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  Matrix logits = linear(h, head, N, d, c.vocab_size);
  std::vector<double> logp(size_t(N), 0.0);
  for (long t = 0; t < N; ++t) {
    if (b.targets[size_t(t)] < 0) continue;
    const double* row = &logits[size_t(t * c.vocab_size)];
    const double m = *std::max_element(row, row + c.vocab_size);
    double z = 0;
    for (long v = 0; v < c.vocab_size; ++v) z += std::exp(row[v] - m);
    logp[size_t(t)] = row[b.targets[size_t(t)]] - m - std::log(z);
  }
  return logp;
}

double weighted_loss(const MistralConfig& c, const Params& P, const Batch& b, const std::vector<float>& w,
                     const AdapterTerm& adapter = nullptr) {
  const std::vector<double> logp = reference_logp(c, P, b, adapter);
  double loss = 0;
  for (size_t t = 0; t < logp.size(); ++t) loss += w[t] * logp[t];
  return loss;
}

// ----- helpers around the model -------------------------------------------------------------

std::unique_ptr<MistralModel> make_model(const MistralConfig& c, const Params& params, ModelOptions o) {
  // The parameter table gives shapes; tensors are written with them so the reader checks them.
  TempFile file(".safetensors");
  std::vector<std::vector<float>> data;
  std::vector<StTensorToWrite> tensors;
  const auto table = parameter_table(c);
  data.reserve(table.size());
  for (const ParameterSpec& p : table) {
    data.emplace_back(params.at(p.name).begin(), params.at(p.name).end());
    tensors.push_back({p.name, StDType::F32, p.shape, data.back().data()});
  }
  write_safetensors(file.path, tensors, {});
  auto model = std::make_unique<MistralModel>(c, o);
  const auto unexpected = model->load_weights({file.path});
  EXPECT(unexpected.empty());
  return model;
}

std::vector<float> run_logp(MistralModel& m, const Batch& b, bool keep) {
  std::vector<float> logp(b.ids.size());
  if (keep) {
    m.forward(b.view(), logp.data());
  } else {
    m.logprobs(b.view(), logp.data());
  }
  return logp;
}

std::vector<float> gradient_of(const MistralModel& m, const std::string& name) {
  const ParameterSpec& p = m.parameter(name);
  std::vector<float> g(p.numel);
  m.read_gradient(p, g.data());
  return g;
}

}  // namespace

ZN_TEST("model.logp_and_every_gradient_match_float64_reference") {
  for (bool tied : {true, false}) {
    const MistralConfig c = tiny_config(tied);
    Params P = random_params(c);
    const Batch b = random_batch(c, {7, 1, 5});
    std::vector<float> w = test::random_f32(b.ids.size());

    ModelOptions o;
    o.max_tokens = 16;
    auto model = make_model(c, P, o);
    const std::vector<float> logp = run_logp(*model, b, true);
    test::expect_close(logp, reference_logp(c, P, b), test::kF32RelTol, "logp");
    model->zero_grad();
    model->backward(w.data(), long(w.size()));

    // Central differences of the float64 loss over every entry of every parameter.
    const auto& table = P.at("model.embed_tokens.weight");
    const long d = c.hidden_size;
    P[kFrozenPadRow].assign(table.begin() + c.pad_token_id * d, table.begin() + (c.pad_token_id + 1) * d);
    for (const ParameterSpec& p : model->parameters()) {
      std::vector<double> fd(p.numel);
      std::vector<double>& values = P[p.name];
      for (size_t i = 0; i < p.numel; ++i) {
        const double saved = values[i];
        const double h = 1e-5 * std::max(1.0, std::fabs(saved));
        values[i] = saved + h;
        const double up = weighted_loss(c, P, b, w);
        values[i] = saved - h;
        const double down = weighted_loss(c, P, b, w);
        values[i] = saved;
        fd[i] = (up - down) / (2 * h);
      }
      test::expect_close(gradient_of(*model, p.name), fd, 1e-4, "d loss / d " + p.name);
    }
    // The pad row gets no gradient from the lookup; with tied weights lm_head's still reaches it.
    if (!tied) {
      const std::vector<float> g = gradient_of(*model, "model.embed_tokens.weight");
      for (long j = 0; j < c.hidden_size; ++j) EXPECT(g[size_t(c.pad_token_id * c.hidden_size + j)] == 0.0f);
    }
  }
}

ZN_TEST("model.checkpointing_gives_the_same_gradients") {
  const MistralConfig c = tiny_config(true);
  const Params P = random_params(c);
  const Batch b = random_batch(c, {6, 4});
  const std::vector<float> w = test::random_f32(b.ids.size());
  ModelOptions plain;
  plain.max_tokens = 12;
  ModelOptions ckpt = plain;
  ckpt.gradient_checkpointing = true;
  auto a = make_model(c, P, plain);
  auto r = make_model(c, P, ckpt);
  EXPECT(r->memory_plan().activations < a->memory_plan().activations);
  const std::vector<float> la = run_logp(*a, b, true), lr = run_logp(*r, b, true);
  EXPECT(la == lr);
  a->backward(w.data(), long(w.size()));
  r->backward(w.data(), long(w.size()));
  for (const ParameterSpec& p : a->parameters()) {
    EXPECT(gradient_of(*a, p.name) == gradient_of(*r, p.name), p.name);
  }
}

ZN_TEST("model.plan_saves_per_layer_only_gemm_and_attention_outputs") {
  // The activation arena, from the layout mistral.cpp describes. Per layer (kept for every layer,
  // or once with checkpointing or when frozen): 1/rms of x and of h and the attention's
  // log-sum-exp; q, k, v, the attention output, and one region holding gate and up (in backward
  // dgate/dup, then dq, dk, dv and the attention backward's packed operands, so it is the larger
  // of the two) are per layer only with checkpointing or when frozen (one slot): when every layer
  // is kept, each is one buffer all layers share (recomputed in backward). Not per layer: the
  // rmsnorm outputs and silu(gate) * up (recomputed into one [N, d] and one shared wide buffer),
  // h (rebuilt in the next layer's input buffer). Shared: the layer inputs x_0..x_L (two when
  // frozen), the final 1/rms and logit log-sum-exp, the norm buffer, the wide buffer (act, dact,
  // dnorm, dattn) and dres (trainable only). N = 64 keeps every piece a multiple of the 16-float
  // alignment. The attention backward's operands, planned for N / 64 + 1 key tiles of 64 keys
  // per kv head (one document), head_dim padded to P = 16 floats: K as columns, V as columns, K
  // as rows (each kv_heads x tiles x 64 x P), scale*Q, dO, the dQ accumulator (each N x heads x
  // P), lse and delta (each N x heads).
  MistralConfig wide = tiny_config(false);
  wide.intermediate_size = 40;  // 2 ffn > q_dim + 2 kv_dim, ffn > q_dim > hidden
  for (const MistralConfig& c : {tiny_config(false), wide}) {
    const size_t N = 64, d = size_t(c.hidden_size), qd = size_t(c.q_dim()), kvd = size_t(c.kv_dim());
    const size_t ffn = size_t(c.intermediate_size), L = size_t(c.num_layers), heads = size_t(c.num_heads);
    const size_t P = 16, tiles = N / 64 + 1;
    const size_t scratch = (3 * size_t(c.num_kv_heads) * tiles * 64 * P + 3 * N * heads * P + 2 * N * heads) / N;
    const size_t region = std::max(2 * ffn, qd + 2 * kvd + scratch), frozen_region = std::max(2 * ffn, qd + 2 * kvd);
    const size_t small = 2 + heads;  // rstd1, rstd2, lse
    const size_t act = std::max({ffn, d, qd});
    ModelOptions o;
    o.max_tokens = long(N);
    const size_t plain = (L + 1) * d + 2 * qd + 2 * kvd + L * small + region + 2 + d + act + d;
    EXPECT(plan_memory(c, o).activations == 4 * N * plain, "ffn ", ffn, ": ", plan_memory(c, o).activations,
           " bytes, expected ", 4 * N * plain);
    o.gradient_checkpointing = true;
    const size_t layer = small + 2 * qd + 2 * kvd + region;
    const size_t checkpointed = (L + 1) * d + layer + 2 + d + act + d;
    EXPECT(plan_memory(c, o).activations == 4 * N * checkpointed, "checkpointing, ffn ", ffn);
    o.trainable = false;
    const size_t frozen = 2 * d + small + 2 * qd + 2 * kvd + frozen_region + 2 + d;  // act is written over gate
    EXPECT(plan_memory(c, o).activations == 4 * N * frozen, "frozen, ffn ", ffn);
  }
}

ZN_TEST("model.forward_backward_equals_forward_then_backward") {
  // The one-pass lm_head (its panel in the top layer's gate/up, act and dres, then those
  // recomputed) against forward() + backward(): the same log-probs and gradients up to the
  // log-sum-exp's summation order, tied and untied, with and without checkpointing, twice in a
  // row (the second call must find the recomputed buffers intact).
  for (const bool tied : {true, false}) {
    for (const bool ckpt : {false, true}) {
      const MistralConfig c = tiny_config(tied);
      const Params P = random_params(c);
      ModelOptions o;
      o.max_tokens = 24;
      o.gradient_checkpointing = ckpt;
      auto separate = make_model(c, P, o), fused = make_model(c, P, o);
      const std::string what = std::string(tied ? "tied" : "untied") + (ckpt ? " checkpointing" : "");
      for (int round = 0; round < 2; ++round) {
        const Batch b = random_batch(c, {9, 7, 5});
        const std::vector<float> w = test::random_f32(b.ids.size());
        separate->zero_grad();
        const std::vector<float> logp = run_logp(*separate, b, true);
        separate->backward(w.data(), long(w.size()));
        fused->zero_grad();
        std::vector<float> fused_logp(b.ids.size());
        fused->forward_backward(b.view(), w.data(), fused_logp.data());
        test::expect_close(fused_logp, test::to_f64(logp), 1e-6, "logp " + what);
        for (const ParameterSpec& p : separate->parameters()) {
          test::expect_close(gradient_of(*fused, p.name), test::to_f64(gradient_of(*separate, p.name)), 1e-5,
                             "d loss / d " + p.name + " " + what);
        }
      }
    }
  }
}

ZN_TEST("model.untied_embedding_gradient_is_held_by_rows") {
  // Rows no token touched have exactly zero gradient, accumulation adds up across micro-batches
  // that touch different rows, and AdamW moves every row (touched or not) to the bits it gives
  // a dense gradient; the plan holds one micro-batch's rows instead of the table.
  MistralConfig c = tiny_config(false);
  c.vocab_size = 40;
  const Params P = random_params(c);
  ModelOptions o;
  o.max_tokens = 12;
  const auto batch_of = [&](std::vector<int32_t> ids) {
    Batch b;
    for (size_t i = 0; i < ids.size(); ++i) {
      b.positions.push_back(int32_t(i));
      b.targets.push_back(i + 1 < ids.size() ? ids[i + 1] : -100);
    }
    b.ids = std::move(ids);
    b.cu = {0, int32_t(b.ids.size())};
    return b;
  };
  const Batch first = batch_of({3, 5, 7, 2, 5, 9}), second = batch_of({11, 3, 30, 31});
  const std::vector<float> w = test::random_f32(6);
  const auto embedding_gradient = [&](MistralModel& m, const std::vector<const Batch*>& batches) {
    m.zero_grad();
    for (const Batch* b : batches) {
      run_logp(m, *b, true);
      m.backward(w.data(), long(b->ids.size()));
    }
    return gradient_of(m, "model.embed_tokens.weight");
  };
  auto model = make_model(c, P, o);
  const std::vector<float> g1 = embedding_gradient(*model, {&first});
  const std::vector<float> g2 = embedding_gradient(*model, {&second});
  const std::vector<float> both = embedding_gradient(*model, {&first, &second});
  const long d = c.hidden_size;
  // 2 is the pad row (no gradient); 9 and 31 only end a document, whose -100 target makes
  // their gradient zero although they have a slot.
  const std::set<int32_t> touched{3, 5, 7, 11, 30};
  std::vector<double> sum(both.size());
  for (size_t i = 0; i < both.size(); ++i) sum[i] = double(g1[i]) + double(g2[i]);
  test::expect_close(both, sum, 1e-6, "accumulated embedding gradient");
  for (long row = 0; row < c.vocab_size; ++row) {
    bool nonzero = false;
    for (long j = 0; j < d; ++j) nonzero |= both[size_t(row * d + j)] != 0.0f;
    EXPECT(nonzero == (touched.count(int32_t(row)) > 0), "row ", row, nonzero ? " has" : " lacks", " a gradient");
  }

  const ParameterSpec& embed = model->parameter("model.embed_tokens.weight");
  std::vector<float> expected(model->master(embed), model->master(embed) + embed.numel);
  std::vector<float> m(embed.numel, 0.0f), v(embed.numel, 0.0f);
  const AdamWOptions hp{1e-2, 0.9, 0.999, 1e-8, 0.1, 0.0};
  cpu::adamw_update(long(embed.numel), {hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, 1, 1.0f},
                    expected.data(), both.data(), m.data(), v.data(), nullptr);
  model->clip_and_step(hp);
  EXPECT(std::memcmp(model->master(embed), expected.data(), embed.numel * 4) == 0,
         "AdamW on the rows differs from AdamW on the dense gradient");

  const size_t params = parameter_count(model->parameters());
  EXPECT(plan_memory(c, o).grads < 4 * params, plan_memory(c, o).grads, " bytes vs dense ", 4 * params);
}

ZN_TEST("model.packed_documents_equal_separate_sequences") {
  const MistralConfig c = tiny_config(false);
  const Params P = random_params(c);
  ModelOptions o;
  o.max_tokens = 20;
  o.trainable = false;
  auto model = make_model(c, P, o);
  const Batch packed = random_batch(c, {6, 9, 3});
  const std::vector<float> together = run_logp(*model, packed, false);
  for (size_t doc = 0; doc + 1 < packed.cu.size(); ++doc) {
    Batch alone;
    const size_t b = size_t(packed.cu[doc]), e = size_t(packed.cu[doc + 1]);
    alone.ids.assign(packed.ids.begin() + long(b), packed.ids.begin() + long(e));
    alone.positions.assign(packed.positions.begin() + long(b), packed.positions.begin() + long(e));
    alone.targets.assign(packed.targets.begin() + long(b), packed.targets.begin() + long(e));
    alone.cu = {0, int32_t(e - b)};
    const std::vector<float> separate = run_logp(*model, alone, false);
    const std::vector<float> slice(together.begin() + long(b), together.begin() + long(e));
    test::expect_close(slice, test::to_f64(separate), 1e-6, "document " + std::to_string(doc));
  }
}

ZN_TEST("model.bf16_mode_stays_close_to_float64") {
  const MistralConfig c = tiny_config(true);
  const Params P = random_params(c);
  const Batch b = random_batch(c, {8, 5});
  ModelOptions o;
  o.max_tokens = 16;
  o.precision = Precision::BF16;
  auto model = make_model(c, P, o);
  // The model computes from its bf16 weights (norms stay f32): the float64 reference takes the
  // same rounded weights, so what is checked is the arithmetic (matmul inputs rounded to 8
  // significant bits, f32 accumulation). Measured over 1500 seeds: median 2.2e-3, max 1.3e-2.
  // Against the unrounded weights the draw's sensitivity to the rounding adds a long tail
  // (median 3.3e-3, but 3.3e-2 at worst, 4 failures in 2000 seeds at 2e-2).
  Params rounded = P;
  for (const ParameterSpec& p : parameter_table(c)) {
    if (p.shape.size() == 1) continue;
    for (double& x : rounded.at(p.name)) x = double(bf16_to_f32(f32_to_bf16(float(x))));
  }
  test::expect_close(run_logp(*model, b, true), reference_logp(c, rounded, b), 2e-2, "bf16 logp");
}

// A frozen bf16 model keeps bf16 weights and f32 norms only: the trainable bf16 model's
// log-probs bit for bit (both compute from the same rounding), parameters read back as that
// rounding (norms exact), 2 bytes a parameter plus the norms in the plan, and a save that
// reloads unchanged.
ZN_TEST("model.frozen_bf16_keeps_only_the_rounded_weights") {
  for (bool tied : {true, false}) {
    const MistralConfig c = tiny_config(tied);
    const Params P = random_params(c);
    const Batch b = random_batch(c, {8, 5});
    ModelOptions o;
    o.max_tokens = 16;
    o.precision = Precision::BF16;
    auto trainable = make_model(c, P, o);
    o.trainable = false;
    auto frozen = make_model(c, P, o);
    const std::vector<float> want = run_logp(*trainable, b, false), got = run_logp(*frozen, b, false);
    EXPECT(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0, "frozen logp differs");
    size_t params = 0, norms = 0;
    for (const ParameterSpec& p : frozen->parameters()) {
      const bool norm = p.shape.size() == 1;
      params += p.numel;
      norms += norm ? p.numel : 0;
      std::vector<float> read(p.numel);
      frozen->read_master(p, read.data());
      for (size_t i = 0; i < p.numel; ++i) {
        const float value = float(P.at(p.name)[i]);
        const float expected = norm ? value : bf16_to_f32(f32_to_bf16(value));
        EXPECT(std::memcmp(&read[i], &expected, sizeof(float)) == 0, p.name, "[", i, "]: ", read[i], " vs ", expected);
      }
    }
    EXPECT(frozen->memory_plan().weights == params * 2 + norms * 4, frozen->memory_plan().weights);
    EXPECT(frozen->memory_plan().weights < trainable->memory_plan().weights / 2);

    TempFile saved(".safetensors");
    std::vector<std::string> names;
    for (const ParameterSpec& p : frozen->parameters()) names.push_back(p.name);
    frozen->save_weights(saved.path, names, SaveDType::F32, {});
    MistralModel again(c, o);
    again.load_weights({saved.path});
    const std::vector<float> reloaded = run_logp(again, b, false);
    EXPECT(std::memcmp(reloaded.data(), got.data(), got.size() * sizeof(float)) == 0, "reloaded logp differs");
  }
}

ZN_TEST("model.optimizer_decays_all_but_norms_and_clips_like_torch") {
  const MistralConfig c = tiny_config(false);
  const Params P = random_params(c);
  ModelOptions o;
  o.max_tokens = 8;
  auto model = make_model(c, P, o);

  // Zero gradients: Adam's update is 0 / (0 + eps) = 0, so only decoupled decay moves weights.
  model->zero_grad();
  const double norm0 = model->clip_and_step({0.1, 0.9, 0.999, 1e-8, 0.5, 1.0});
  EXPECT(norm0 == 0.0);
  for (const ParameterSpec& p : model->parameters()) {
    const bool norm_weight = p.name.find("norm") != std::string::npos;
    EXPECT(p.decay == !norm_weight, p.name);
    std::vector<double> expected = P.at(p.name);
    for (double& x : expected) x *= norm_weight ? 1.0 : 1.0 - 0.1 * 0.5;
    const std::vector<float> got(model->master(p), model->master(p) + p.numel);
    test::expect_close(got, expected, 1e-6, "decayed " + p.name);
  }

  // The grad norm over every parameter, before clipping.
  const Batch b = random_batch(c, {6});
  std::vector<float> w(b.ids.size(), -1.0f);
  run_logp(*model, b, true);
  model->zero_grad();
  model->backward(w.data(), long(w.size()));
  double sum = 0;
  for (const ParameterSpec& p : model->parameters())
    for (float g : gradient_of(*model, p.name)) sum += double(g) * g;
  const double norm = model->clip_and_step({1e-3, 0.9, 0.999, 1e-8, 0.0, 1e-3});
  EXPECT(std::fabs(norm - std::sqrt(sum)) <= 1e-6 * std::sqrt(sum), norm, " vs ", std::sqrt(sum));
  EXPECT(model->optimizer_step() == 2);
}

ZN_TEST("model.optimizer_state_round_trips") {
  const MistralConfig c = tiny_config(true);
  const Params P = random_params(c);
  ModelOptions o;
  o.max_tokens = 8;
  auto a = make_model(c, P, o);
  auto r = make_model(c, P, o);
  const Batch b = random_batch(c, {7});
  std::vector<float> w(b.ids.size(), -0.5f);
  for (int step = 0; step < 2; ++step) {
    run_logp(*a, b, true);
    a->zero_grad();
    a->backward(w.data(), long(w.size()));
    a->clip_and_step({1e-2, 0.9, 0.99, 1e-8, 0.1, 1.0});
  }
  TempFile state(".safetensors"), weights(".safetensors");
  a->save_optimizer_state(state.path);
  std::vector<std::string> names;
  for (const ParameterSpec& p : a->parameters()) names.push_back(p.name);
  a->save_weights(weights.path, names, SaveDType::F32, {{"format", "pt"}});
  EXPECT(r->load_weights({weights.path}).empty());
  r->load_optimizer_state(state.path);
  EXPECT(r->optimizer_step() == 2);
  // One more identical step on both: bit-identical weights.
  for (MistralModel* m : {a.get(), r.get()}) {
    run_logp(*m, b, true);
    m->zero_grad();
    m->backward(w.data(), long(w.size()));
    m->clip_and_step({1e-2, 0.9, 0.99, 1e-8, 0.1, 1.0});
  }
  for (const ParameterSpec& p : a->parameters()) {
    EXPECT(std::equal(a->master(p), a->master(p) + p.numel, r->master(p)), p.name);
  }
}

// A trainable model with frozen parameters (ModelOptions::frozen; the trained parameter group
// of parameters.h): the same forward, the same gradients for what it trains and none for what it
// freezes, an optimizer step that moves only the group, and optimizer state for the group alone.
ZN_TEST("model.frozen_parameters_get_no_gradient_state_or_update") {
  const AdamWOptions hp{1e-2, 0.9, 0.99, 1e-8, 0.1, 0.0};  // no clipping: the norms differ
  for (bool tied : {true, false}) {
    const MistralConfig c = tiny_config(tied);
    const Params P = random_params(c);
    const Batch b = random_batch(c, {6, 4});
    const std::vector<float> w = test::random_f32(b.ids.size());
    // The head and top layer's MLP frozen (the log-prob head's and rmsnorm's null dweight), or
    // the embedding and the bottom layer (nothing below them trains: the backward still runs).
    const std::vector<std::vector<std::string>> frozen_sets = {
        {tied ? "model.embed_tokens.weight" : "lm_head.weight", "model.norm.weight",
         "model.layers.1.mlp.down_proj.weight", "model.layers.1.post_attention_layernorm.weight"},
        {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight", "model.layers.0.self_attn.q_proj.weight",
         "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight",
         "model.layers.0.self_attn.o_proj.weight"}};
    for (const std::vector<std::string>& frozen : frozen_sets) {
      for (Precision precision : {Precision::F32, Precision::BF16}) {
        for (bool fused : {false, true}) {
          const std::string where = std::string(tied ? "tied" : "untied") + (precision == Precision::BF16 ? " bf16" : " f32") +
                                    (fused ? " forwardBackward " : " forward+backward ") + frozen.front();
          ModelOptions o;
          o.max_tokens = 16;
          o.precision = precision;
          auto full = make_model(c, P, o);
          o.frozen = frozen;
          auto part = make_model(c, P, o);
          auto is_frozen = [&](const ParameterSpec& p) {
            return std::find(frozen.begin(), frozen.end(), p.name) != frozen.end();
          };
          std::vector<float> logp_full(b.ids.size()), logp_part(b.ids.size());
          for (auto [m, logp] : {std::pair{full.get(), &logp_full}, std::pair{part.get(), &logp_part}}) {
            m->zero_grad();
            if (fused) {
              m->forward_backward(b.view(), w.data(), logp->data());
            } else {
              m->forward(b.view(), logp->data());
              m->backward(w.data(), long(w.size()));
            }
          }
          EXPECT(logp_full == logp_part, where, ": logp differs");
          double squares = 0;
          size_t trained = 0;
          for (const ParameterSpec& p : part->parameters()) {
            if (is_frozen(p)) {
              test::expect_error([&] { gradient_of(*part, p.name); }, "'" + p.name + "' is frozen");
              continue;
            }
            trained += p.numel;
            const std::vector<float> g = gradient_of(*part, p.name);
            EXPECT(g == gradient_of(*full, p.name), where, ": gradient of ", p.name, " differs");
            for (float x : g) squares += double(x) * x;
          }
          EXPECT(part->memory_plan().optimizer == trained * 8, where, ": ", part->memory_plan().optimizer);
          EXPECT(part->memory_plan().grads < full->memory_plan().grads, where);

          const double norm = part->clip_and_step(hp);
          full->clip_and_step(hp);
          EXPECT(std::fabs(norm - std::sqrt(squares)) <= 1e-6 * std::sqrt(squares), where, ": norm ", norm);
          std::vector<float> before(0), after(0);
          for (const ParameterSpec& p : part->parameters()) {
            after.resize(p.numel);
            part->read_master(p, after.data());
            if (!is_frozen(p)) {
              std::vector<float> want(p.numel);
              full->read_master(full->parameter(p.name), want.data());
              EXPECT(after == want, where, ": stepped ", p.name, " differs");
              continue;
            }
            const bool rounded = precision == Precision::BF16 && p.shape.size() == 2;
            for (size_t i = 0; i < p.numel; ++i) {
              const float value = float(P.at(p.name)[i]);
              const float expected = rounded ? bf16_to_f32(f32_to_bf16(value)) : value;
              EXPECT(after[i] == expected, where, ": frozen ", p.name, "[", i, "] moved");
            }
          }

          // The optimizer state holds the group's members only, and resumes bit-identically.
          TempFile state(".safetensors");
          part->save_optimizer_state(state.path);
          {
            SafetensorsFile file(state.path);
            EXPECT(file.tensors().size() == 2 * (part->parameters().size() - frozen.size()), where);
            for (const std::string& name : frozen) EXPECT(!file.find("exp_avg." + name), where, ": ", name);
          }
          TempFile weights(".safetensors");
          std::vector<std::string> names;
          for (const ParameterSpec& p : part->parameters()) names.push_back(p.name);
          part->save_weights(weights.path, names, SaveDType::F32, {});
          MistralModel resumed(c, o);
          resumed.load_weights({weights.path});
          resumed.load_optimizer_state(state.path);
          for (MistralModel* m : {part.get(), &resumed}) {
            m->zero_grad();
            m->forward(b.view(), logp_part.data());
            m->backward(w.data(), long(w.size()));
            m->clip_and_step(hp);
          }
          for (const ParameterSpec& p : part->parameters()) {
            std::vector<float> x(p.numel), y(p.numel);
            part->read_master(p, x.data());
            resumed.read_master(resumed.parameter(p.name), y.data());
            EXPECT(x == y, where, ": resumed ", p.name, " differs");
          }
        }
      }
    }
  }
  ModelOptions o;
  o.max_tokens = 4;
  o.frozen = {"model.layers.0.mlp.gate_proj"};
  test::expect_error([&] { MistralModel(tiny_config(false), o); }, "no parameter named 'model.layers.0.mlp.gate_proj'");
}

namespace {

// The base parameters with every adapter merged in, W + s B A (the float64 reference's weights).
Params merged(const Params& base, const Params& adapters, const LoraTable& lora, const std::vector<ParameterSpec>& table) {
  Params out = base;
  const double s = lora.config().scale();
  const long r = lora.config().rank;
  for (const ParameterSpec& p : table) {
    const LoraPair* pair = lora.pair(p);
    if (!pair) continue;
    const long rows = p.shape[0], cols = p.shape[1];
    const std::vector<double>&A = adapters.at(pair->a->name), &B = adapters.at(pair->b->name);
    std::vector<double>& W = out[p.name];
    for (long i = 0; i < rows; ++i)
      for (long j = 0; j < cols; ++j) {
        double sum = 0;
        for (long k = 0; k < r; ++k) sum += B[size_t(i * r + k)] * A[size_t(k * cols + j)];
        W[size_t(i * cols + j)] += s * sum;
      }
  }
  return out;
}

void write_params(const std::string& path, const std::vector<ParameterSpec>& table, const Params& values) {
  std::vector<std::vector<float>> data;
  std::vector<StTensorToWrite> tensors;
  data.reserve(table.size());
  for (const ParameterSpec& p : table) {
    data.emplace_back(values.at(p.name).begin(), values.at(p.name).end());
    tensors.push_back({p.name, StDType::F32, p.shape, data.back().data()});
  }
  write_safetensors(path, tensors, {});
}

}  // namespace

// LoRA (model/lora.h) against float64: the model with adapters is the base with W + s B A
// merged in (PEFT's merge_and_unload), so its log-probs are the reference's on merged weights
// and the gradients of every A and B entry are central differences of that reference.
ZN_TEST("model.lora_adapters_match_float64_merged_weights") {
  struct Case {
    LoraConfig lora;
    std::string trained_base;  // a base parameter trained beside the adapters (PEFT's modules_to_save)
  };
  const std::vector<Case> cases = {
      {{2, 3.0, false, {"all-linear"}, {}}, ""},
      {{3, 4.0, true, {"q_proj", "v_proj", "down_proj"}, {"model.norm.weight"}}, "model.norm.weight"}};
  for (const Case& lc : cases) {
    for (bool tied : {false, true}) {
      const MistralConfig c = tiny_config(tied);
      const Params P = random_params(c);
      const Batch b = random_batch(c, {7, 5});
      const std::vector<float> w = test::random_f32(b.ids.size());
      const std::vector<ParameterSpec> table = parameter_table(c);
      const LoraTable lora(table, lc.lora);
      Params adapters;
      for (const ParameterSpec& p : lora.parameters()) adapters[p.name] = test::to_f64(test::random_f32(p.numel, 0.5f));
      const std::string where = std::string(tied ? "tied " : "untied ") + lc.lora.target_modules.front();

      ModelOptions o;
      o.max_tokens = 16;
      o.lora = lc.lora;
      for (const ParameterSpec& p : table)
        if (p.name != lc.trained_base) o.frozen.push_back(p.name);
      auto model = make_model(c, P, o);
      TempFile adapter_file(".safetensors");
      write_params(adapter_file.path, lora.parameters(), adapters);
      const AdapterLoad loaded = model->load_adapters({adapter_file.path});
      EXPECT(loaded.unexpected.empty(), where);
      // A saved module the file lacks keeps the base's values (a fresh adapter's start).
      EXPECT(loaded.absent == lc.lora.modules_to_save, where);

      const std::vector<float> logp = run_logp(*model, b, true);
      test::expect_close(logp, reference_logp(c, merged(P, adapters, lora, table), b), test::kF32RelTol,
                         where + ": logp");
      model->zero_grad();
      model->backward(w.data(), long(w.size()));
      Params fd_adapters = adapters;
      double squares = 0;
      for (const ParameterSpec& p : model->adapter_parameters()) {
        std::vector<double> fd(p.numel);
        std::vector<double>& values = fd_adapters[p.name];
        for (size_t i = 0; i < p.numel; ++i) {
          const double saved = values[i], h = 1e-5 * std::max(1.0, std::fabs(saved));
          values[i] = saved + h;
          const double up = weighted_loss(c, merged(P, fd_adapters, lora, table), b, w);
          values[i] = saved - h;
          const double down = weighted_loss(c, merged(P, fd_adapters, lora, table), b, w);
          values[i] = saved;
          fd[i] = (up - down) / (2 * h);
        }
        const std::vector<float> g = gradient_of(*model, p.name);
        test::expect_close(g, fd, 1e-4, where + ": d loss / d " + p.name);
        for (float x : g) squares += double(x) * x;
      }
      for (const ParameterSpec& p : model->parameters()) {
        if (p.name != lc.trained_base) {
          test::expect_error([&] { gradient_of(*model, p.name); }, "'" + p.name + "' is frozen");
          continue;
        }
        Params fd_base = merged(P, adapters, lora, table);
        std::vector<double> fd(p.numel);
        for (size_t i = 0; i < p.numel; ++i) {
          const double saved = fd_base[p.name][i], h = 1e-5;
          fd_base[p.name][i] = saved + h;
          const double up = weighted_loss(c, fd_base, b, w);
          fd_base[p.name][i] = saved - h;
          const double down = weighted_loss(c, fd_base, b, w);
          fd_base[p.name][i] = saved;
          fd[i] = (up - down) / (2 * h);
        }
        const std::vector<float> g = gradient_of(*model, p.name);
        test::expect_close(g, fd, 1e-4, where + ": d loss / d " + p.name);
        for (float x : g) squares += double(x) * x;
      }

      // With the adapters off, the model is the base model, bit for bit.
      ModelOptions plain;
      plain.max_tokens = 16;
      auto base = make_model(c, P, plain);
      model->set_adapters_enabled(false);
      EXPECT(run_logp(*model, b, false) == run_logp(*base, b, false), where, ": adapters off differs from the base");
      model->set_adapters_enabled(true);

      // One step over both groups with one global norm; the frozen base stays put.
      const AdamWOptions hp{1e-2, 0.9, 0.99, 1e-8, 0.1, 0.5};
      const double norm = model->clip_and_step(hp);
      EXPECT(std::fabs(norm - std::sqrt(squares)) <= 1e-6 * std::sqrt(squares), where, ": norm ", norm);
      for (const ParameterSpec& p : model->parameters()) {
        if (p.name == lc.trained_base) continue;
        const std::vector<float> now(model->master(p), model->master(p) + p.numel);
        EXPECT(now == std::vector<float>(P.at(p.name).begin(), P.at(p.name).end()), where, ": frozen ", p.name, " moved");
      }
      size_t moved = 0;
      for (const ParameterSpec& p : model->adapter_parameters())
        for (size_t i = 0; i < p.numel; ++i) moved += model->master(p)[i] != float(adapters.at(p.name)[i]);
      EXPECT(moved > 0, where, ": no adapter moved");

      // Adapters and optimizer state saved and resumed: the next step is bit-identical.
      TempFile saved(".safetensors"), state(".safetensors");
      std::vector<std::string> names;
      for (const ParameterSpec& p : model->adapter_parameters()) names.push_back(p.name);
      // The saved module under PEFT's name, as PEFT's adapter file holds it.
      if (!lc.trained_base.empty()) names.push_back(peft_saved_name(lc.trained_base));
      model->save_weights(saved.path, names, SaveDType::F32, {});
      model->save_optimizer_state(state.path);
      auto resumed = make_model(c, P, o);
      const AdapterLoad reloaded = resumed->load_adapters({saved.path});
      EXPECT(reloaded.unexpected.empty() && reloaded.absent.empty(), where);
      resumed->load_optimizer_state(state.path);
      EXPECT(resumed->optimizer_step() == 1, where);
      for (MistralModel* m : {model.get(), resumed.get()}) {
        m->zero_grad();
        std::vector<float> unused(b.ids.size());
        m->forward_backward(b.view(), w.data(), unused.data());
        m->clip_and_step(hp);
      }
      std::vector<const ParameterSpec*> trained;
      for (const ParameterSpec& p : model->adapter_parameters()) trained.push_back(&p);
      if (!lc.trained_base.empty()) trained.push_back(&model->parameter(lc.trained_base));
      for (const ParameterSpec* p : trained) {
        const ParameterSpec& q = resumed->parameter(p->name);
        EXPECT(std::equal(model->master(*p), model->master(*p) + p->numel, resumed->master(q)), where, ": resumed ",
               p->name);
      }
    }
  }
  test::expect_error([] { LoraTable(parameter_table(tiny_config(false)), {4, 8.0, false, {"qkv_proj"}, {}}); },
                     "lora_target_modules names 'qkv_proj'");
  test::expect_error([] { LoraTable(parameter_table(tiny_config(false)), {0, 8.0, false, {"q_proj"}, {}}); },
                     "lora_r must be positive");
  test::expect_error([] { LoraTable(parameter_table(tiny_config(true)), {2, 8.0, false, {"q_proj"}, {"lm_head.weight"}}); },
                     "no parameter named 'lm_head.weight'");
  test::expect_error(
      [] { LoraTable(parameter_table(tiny_config(false)), {2, 8.0, false, {"q_proj"}, {"model.layers.0.self_attn.q_proj.weight"}}); },
      "both adapted and in modules_to_save");
}

ZN_TEST("model.bad_batches_and_configs_are_errors_naming_the_field") {
  using test::expect_error;
  MistralConfig bad = tiny_config(true);
  bad.num_kv_heads = 3;
  expect_error([&] { bad.validate(); }, "num_key_value_heads");

  const MistralConfig c = tiny_config(true);
  ModelOptions o;
  o.max_tokens = 8;
  MistralModel model(c, o);
  std::vector<float> logp(16);
  Batch b = random_batch(c, {4});
  b.ids[2] = 13;
  expect_error([&] { model.forward(b.view(), logp.data()); }, "inputIds[2] = 13");
  b = random_batch(c, {4});
  b.targets[0] = -5;
  expect_error([&] { model.forward(b.view(), logp.data()); }, "targets[0] = -5");
  b = random_batch(c, {4});
  b.cu = {0, 3};
  expect_error([&] { model.forward(b.view(), logp.data()); }, "last cuSeqlens offset");
  b = random_batch(c, {9});
  expect_error([&] { model.forward(b.view(), logp.data()); }, "more than maxTokens 8");
  expect_error([&] { model.backward(logp.data(), 4); }, "needs a forward() first");

  // A plan larger than the host's memory is refused before allocating, naming the plan.
  if (available_host_memory() > 0) {
    ModelOptions huge;
    huge.max_tokens = 1L << 40;
    for (const std::string needle : {"the memory plan (weights ", " + activations ", "maxTokens 1099511627776",
                                     "of host memory, and ", "is available", "gradientCheckpointing: true"})
      expect_error([&] { MistralModel impossible(c, huge); }, needle);
  }
}

// ----- generation over the KvCache ---------------------------------------------------------

namespace {

// Next-token logits of whole sequences, each one a document of a fresh forward.
std::vector<float> full_logits(MistralModel& m, const std::vector<std::vector<int32_t>>& sequences) {
  Batch b;
  b.cu.push_back(0);
  for (const auto& s : sequences) {
    for (size_t i = 0; i < s.size(); ++i) {
      b.ids.push_back(s[i]);
      b.positions.push_back(int32_t(i));
      b.targets.push_back(-100);
    }
    b.cu.push_back(int32_t(b.ids.size()));
  }
  std::vector<float> logits(sequences.size() * size_t(m.config().vocab_size));
  m.next_token_logits(b.view(), logits.data());
  return logits;
}

// One extend call: for each (slot, new tokens), the sequence's history grows by them.
std::vector<float> extend(MistralModel& m, std::map<int, std::vector<int32_t>>& history,
                          const std::vector<std::pair<int, std::vector<int32_t>>>& calls) {
  std::vector<int32_t> slots, counts, tokens;
  for (const auto& [slot, add] : calls) {
    slots.push_back(slot);
    counts.push_back(int32_t(add.size()));
    tokens.insert(tokens.end(), add.begin(), add.end());
    history[slot].insert(history[slot].end(), add.begin(), add.end());
  }
  std::vector<float> logits(calls.size() * size_t(m.config().vocab_size));
  m.extend({int(calls.size()), slots.data(), counts.data(), tokens.data()}, logits.data());
  return logits;
}

}  // namespace

// Prompts longer than the window (3) prefilled together, then single-token steps past the window
// (the rolling buffer wraps), a sequence leaving and another joining mid-way beside decoding
// ones, and a multi-token chunk that fits before the wrap: every step's logits are those of a
// fresh forward over the whole sequence.
ZN_TEST("model.cached_extend_matches_a_forward_over_the_whole_sequence") {
  const MistralConfig c = tiny_config(false);
  const Params P = random_params(c);
  std::uniform_int_distribution<int> token(0, int(c.vocab_size) - 1);
  for (Precision precision : {Precision::F32, Precision::BF16}) {
    for (bool trainable : {false, true}) {
      ModelOptions o;
      o.max_tokens = 32;  // the longest comparison: three whole sequences, 26 tokens
      o.precision = precision;
      o.trainable = trainable;
      auto model = make_model(c, P, o);
      model->start_generation(3, 20);
      std::map<int, std::vector<int32_t>> history;
      auto random_tokens = [&](int n) {
        std::vector<int32_t> t;
        for (int i = 0; i < n; ++i) t.push_back(token(test::rng()));
        return t;
      };
      auto check = [&](const std::vector<float>& got, const std::vector<int>& slots, const char* what) {
        std::vector<std::vector<int32_t>> sequences;
        for (int s : slots) sequences.push_back(history[s]);
        const std::vector<float> want = full_logits(*model, sequences);
        // bf16: the cached and the whole-sequence paths sum in different orders, so now and then
        // an activation near a rounding boundary rounds to the neighbouring bf16 value in one of
        // them (measured over 400 seeds: 3 such runs, relative errors 1.2e-3 to 3.1e-3; every
        // other run below 1e-6). A wrong slot, position or window moves whole logits, far more.
        test::expect_close(got, test::to_f64(want), precision == Precision::F32 ? 1e-5 : 1e-2, what);
      };
      const int a = model->acquire_sequence(), b = model->acquire_sequence();
      check(extend(*model, history, {{a, random_tokens(5)}, {b, random_tokens(2)}}), {a, b}, "prefill");
      for (int step = 0; step < 4; ++step)
        check(extend(*model, history, {{a, random_tokens(1)}, {b, random_tokens(1)}}), {a, b}, "decode");
      model->release_sequence(b);
      history.erase(b);
      const int d = model->acquire_sequence();
      EXPECT(d >= 0);
      // A joins decoding beside a prompt of 2 tokens (<= the cache's 3 rows).
      check(extend(*model, history, {{d, random_tokens(2)}, {a, random_tokens(1)}}), {d, a}, "join");
      check(extend(*model, history, {{d, random_tokens(1)}, {a, random_tokens(1)}}), {d, a}, "after join");
      const int e = model->acquire_sequence();
      check(extend(*model, history, {{e, random_tokens(1)}}), {e}, "one-token prompt");
      check(extend(*model, history, {{e, random_tokens(2)}}), {e}, "chunk before the wrap");
      for (int step = 0; step < 3; ++step)
        check(extend(*model, history, {{a, random_tokens(1)}, {d, random_tokens(1)}, {e, random_tokens(1)}}),
              {a, d, e}, "three decoding");
    }
  }
}

ZN_TEST("model.generation_bounds_and_errors") {
  const MistralConfig c = tiny_config(true);
  // The cache holds min(window, context) positions per sequence and layer: keys and values.
  EXPECT(MistralModel::generation_bytes(c, {}, 4, 100) == size_t(2 * c.num_layers * 4 * 3 * c.num_kv_heads * c.head_dim * 4));
  EXPECT(MistralModel::generation_bytes(c, {}, 4, 2) == size_t(2 * c.num_layers * 4 * 2 * c.num_kv_heads * c.head_dim * 4));
  const Params P = random_params(c);
  ModelOptions o;
  o.max_tokens = 8;
  o.trainable = false;
  auto model = make_model(c, P, o);
  using test::expect_error;
  std::vector<float> logits(size_t(2 * c.vocab_size));
  int32_t slot = 0, count = 1, token = 1;
  expect_error([&] { model->extend({1, &slot, &count, &token}, logits.data()); }, "before startGeneration()");
  model->start_generation(2, 10);
  slot = model->acquire_sequence();
  expect_error([&] { int32_t other = 1; model->extend({1, &other, &count, &token}, logits.data()); }, "holds no sequence");
  token = int32_t(c.vocab_size);
  expect_error([&] { model->extend({1, &slot, &count, &token}, logits.data()); }, "tokens[0] = 13");
  std::vector<int32_t> many(12, 1);
  count = 12;
  expect_error([&] { model->extend({1, &slot, &count, many.data()}, logits.data()); }, "beyond the context of 10");
  count = 9;
  expect_error([&] { model->extend({1, &slot, &count, many.data()}, logits.data()); }, "more than maxTokens 8");
  count = 2;
  model->extend({1, &slot, &count, many.data()}, logits.data());
  // 2 cached + 2 new would wrap the 3 rows within the call.
  expect_error([&] { model->extend({1, &slot, &count, many.data()}, logits.data()); }, "would wrap");
  count = 0;
  expect_error([&] { model->extend({1, &slot, &count, many.data()}, logits.data()); }, "at least 1");
}

namespace {

// LoRA's term with lora_dropout as the float64 reference computes it: s (dropout(x) A^T) B^T, the
// mask of (draw, layer, projection) taken from the counter function the masks are specified by
// (model/lora.h: element (row, col) kept when draw row * in + col of lora_dropout_key's stream is
// at least p * 2^64), kept values scaled by 1 / (1 - p). No draw: no dropout (evaluation).
AdapterTerm lora_reference(const Params& adapters, const LoraConfig& lora, const LoraDropoutDraw* draw) {
  return [&adapters, lora, draw](int l, const std::string& module, const Matrix& x, long N, long in, long out,
                                 Matrix& y) {
    const std::string block = module == "gate_proj" || module == "up_proj" || module == "down_proj" ? "mlp" : "self_attn";
    const std::string prefix = "base_model.model.model.layers." + std::to_string(l) + "." + block + "." + module;
    if (!adapters.count(prefix + ".lora_A.weight")) return;
    const std::vector<double>&A = adapters.at(prefix + ".lora_A.weight"), &B = adapters.at(prefix + ".lora_B.weight");
    const auto& names = lora_module_names();
    const int projection = int(std::find(names.begin(), names.end(), module) - names.begin());
    const uint64_t key = draw ? lora_dropout_key(*draw, l, projection) : 0;
    Matrix dropped = x;
    for (size_t i = 0; draw && i < dropped.size(); ++i) {
      const bool keep = double(counter_bits(key, i)) >= std::ldexp(lora.dropout, 64);
      dropped[i] = keep ? dropped[i] / (1.0 - lora.dropout) : 0.0;
    }
    const long r = lora.rank;
    const Matrix t = linear(dropped, A, N, in, r);
    const Matrix term = linear(t, B, N, r, out);
    for (size_t i = 0; i < y.size(); ++i) y[i] += lora.scale() * term[i];
  };
}

}  // namespace

// lora_dropout (model/lora.h) against float64: a training forward's log-probs are the reference's
// with the same masks (drawn per step, micro-batch, layer and projection), every A and B gradient
// is a central difference of that reference, gradient checkpointing regenerates the masks, an
// evaluation forward applies none, p = 0 runs no dropout at all, and a resumed run draws the masks
// the uninterrupted one drew (bit-identical steps).
ZN_TEST("model.lora_dropout_matches_float64_reference_with_the_same_masks") {
  const std::vector<LoraConfig> cases = {{2, 3.0, false, {"all-linear"}, {}, 0.1, 7},
                                         {3, 4.0, true, {"q_proj", "v_proj", "down_proj"}, {}, 0.1, 12345}};
  for (const LoraConfig& lc : cases) {
    const bool tied = lc.rslora;
    const MistralConfig c = tiny_config(tied);
    const Params P = random_params(c);
    const Batch b = random_batch(c, {7, 5}), b2 = random_batch(c, {6, 6});
    const std::vector<float> w = test::random_f32(b.ids.size());
    const std::vector<ParameterSpec> table = parameter_table(c);
    const LoraTable lora(table, lc);
    Params adapters;
    for (const ParameterSpec& p : lora.parameters()) adapters[p.name] = test::to_f64(test::random_f32(p.numel, 0.5f));
    const std::string where = lc.target_modules.front();
    TempFile adapter_file(".safetensors");
    write_params(adapter_file.path, lora.parameters(), adapters);
    ModelOptions o;
    o.max_tokens = 16;
    o.lora = lc;
    for (const ParameterSpec& p : table) o.frozen.push_back(p.name);
    auto make = [&](const ModelOptions& options) {
      auto m = make_model(c, P, options);
      EXPECT(m->load_adapters({adapter_file.path}).unexpected.empty(), where);
      return m;
    };
    auto model = make(o);

    // The first training forward draws (seed, step 0, micro-batch 0).
    const LoraDropoutDraw first{lc.dropout_seed, 0, 0};
    const std::vector<float> logp = run_logp(*model, b, true);
    const std::vector<double> expected = reference_logp(c, P, b, lora_reference(adapters, lc, &first));
    test::expect_close(logp, expected, test::kF32RelTol, where + ": training logp with dropout");
    const std::vector<double> undropped = reference_logp(c, P, b, lora_reference(adapters, lc, nullptr));
    double moved = 0;
    for (size_t t = 0; t < logp.size(); ++t) moved = std::max(moved, std::fabs(expected[t] - undropped[t]));
    EXPECT(moved > 1e-3, where, ": the masks changed no log-prob (", moved, ")");

    model->zero_grad();
    model->backward(w.data(), long(w.size()));
    Params fd_adapters = adapters;
    for (const ParameterSpec& p : model->adapter_parameters()) {
      std::vector<double> fd(p.numel);
      std::vector<double>& values = fd_adapters[p.name];
      for (size_t i = 0; i < p.numel; ++i) {
        const double saved = values[i], h = 1e-5 * std::max(1.0, std::fabs(saved));
        values[i] = saved + h;
        const double up = weighted_loss(c, P, b, w, lora_reference(fd_adapters, lc, &first));
        values[i] = saved - h;
        const double down = weighted_loss(c, P, b, w, lora_reference(fd_adapters, lc, &first));
        values[i] = saved;
        fd[i] = (up - down) / (2 * h);
      }
      test::expect_close(gradient_of(*model, p.name), fd, 1e-4, where + ": d loss / d " + p.name);
    }

    // Gradient checkpointing recomputes the layers, drawing the same masks again.
    ModelOptions ckpt_options = o;
    ckpt_options.gradient_checkpointing = true;
    auto ckpt = make(ckpt_options);
    EXPECT(run_logp(*ckpt, b, true) == logp, where, ": checkpointed forward differs");
    ckpt->zero_grad();
    ckpt->backward(w.data(), long(w.size()));
    for (const ParameterSpec& p : model->adapter_parameters())
      test::expect_close(gradient_of(*ckpt, p.name), test::to_f64(gradient_of(*model, p.name)), 1e-5,
                         where + ": checkpointed d loss / d " + p.name);

    // Evaluation forwards apply no dropout; p = 0 runs none while training either.
    test::expect_close(run_logp(*model, b, false), undropped, test::kF32RelTol, where + ": eval logp");
    ModelOptions no_dropout = o;
    no_dropout.lora.dropout = 0;
    auto plain = make(no_dropout);
    EXPECT(run_logp(*plain, b, true) == run_logp(*model, b, false), where, ": p = 0 differs from evaluation");
    const size_t widest = size_t(std::max({c.hidden_size, c.q_dim(), c.intermediate_size})) * size_t(o.max_tokens);
    EXPECT(plan_memory(c, o).activations == plan_memory(c, no_dropout).activations + (widest + 15) / 16 * 16 * 4,
           where, ": the plan holds one [maxTokens, widest input] f32 buffer for the dropped input");

    // The next forward of the step is micro-batch 1; after the step, step 1's micro-batch 0.
    const std::vector<float> w2 = test::random_f32(b2.ids.size());
    std::vector<float> unused(b2.ids.size());
    const LoraDropoutDraw second{lc.dropout_seed, 0, 1}, next_step{lc.dropout_seed, 1, 0};
    model->forward_backward(b2.view(), w2.data(), unused.data());
    test::expect_close(unused, reference_logp(c, P, b2, lora_reference(adapters, lc, &second)), test::kF32RelTol,
                       where + ": micro-batch 1's masks");
    const AdamWOptions hp{1e-2, 0.9, 0.99, 1e-8, 0.1, 0.5};
    model->clip_and_step(hp);
    Params stepped;
    for (const ParameterSpec& p : model->adapter_parameters())
      stepped[p.name].assign(model->master(p), model->master(p) + p.numel);
    TempFile saved(".safetensors"), state(".safetensors");
    std::vector<std::string> names;
    for (const ParameterSpec& p : model->adapter_parameters()) names.push_back(p.name);
    model->save_weights(saved.path, names, SaveDType::F32, {});
    model->save_optimizer_state(state.path);

    // Resumed from the checkpoint after step 1: two more steps of two micro-batches each are
    // bit-identical to the uninterrupted run's (whose first forward draws step 1's masks).
    auto resumed = make(o);
    resumed->load_adapters({saved.path});
    resumed->load_optimizer_state(state.path);
    std::vector<float> step1_logp;
    for (MistralModel* m : {model.get(), resumed.get()}) {
      for (int step = 0; step < 2; ++step) {
        m->zero_grad();
        std::vector<float> first_logp(b.ids.size());
        m->forward_backward(b.view(), w.data(), first_logp.data());
        if (m == model.get() && step == 0) step1_logp = first_logp;
        m->forward_backward(b2.view(), w2.data(), unused.data());
        m->clip_and_step(hp);
      }
    }
    test::expect_close(step1_logp, reference_logp(c, P, b, lora_reference(stepped, lc, &next_step)),
                       test::kF32RelTol, where + ": step 1's masks");
    for (const ParameterSpec& p : model->adapter_parameters()) {
      const ParameterSpec& q = resumed->parameter(p.name);
      EXPECT(std::equal(model->master(p), model->master(p) + p.numel, resumed->master(q)), where, ": resumed ", p.name);
    }
  }
  LoraConfig bad{4, 8.0, false, {"q_proj"}, {}, 1.0, 0};
  test::expect_error([&] { LoraTable(parameter_table(tiny_config(false)), bad); }, "lora_dropout must be in [0, 1), got 1");
  bad.dropout = -0.1;
  test::expect_error([&] { LoraTable(parameter_table(tiny_config(false)), bad); }, "lora_dropout must be in [0, 1)");
}

// ----- ZeRO: sharded optimizer state (model/zero_shard.h) -------------------------------------

ZN_TEST("model.zero_shard_ranges_tile_the_group_in_rank_order") {
  for (size_t total : {size_t(0), size_t(5), size_t(16), size_t(100), size_t(1000), size_t(12345), size_t(7) << 32}) {
    for (int count : {1, 2, 3, 7, 8}) {
      size_t at = 0;
      for (int r = 0; r < count; ++r) {
        const ElementRange range = shard_range(total, {r, count});
        EXPECT(range.begin == at && range.end >= range.begin, total, " / ", count, " rank ", r);
        EXPECT(range.end == total || range.end % kShardAlign == 0, "boundaries on 16 elements");
        // Within one alignment unit of the even split.
        const double even = double(total) / count;
        EXPECT(std::fabs(double(range.size()) - even) <= double(kShardAlign), range.size(), " vs ", even);
        at = range.end;
      }
      EXPECT(at == total);
      const ElementRange within{total / 3, total / 2};
      size_t sum = 0;
      for (size_t c : shard_counts(total, count, within)) sum += c;
      EXPECT(sum == within.size());
    }
  }
  zn::test::expect_error([] { shard_range(10, {2, 2}); }, "shard rank 2 of 2 is not a rank");
}

namespace {

// What the ranks' all-gather does, between models in one process: each model's owned part of
// every weight segment into the others'.
void gather_weights(const std::vector<MistralModel*>& ranks) {
  std::vector<std::vector<WeightSegment>> segments;
  for (MistralModel* m : ranks) segments.push_back(m->weight_segments());
  for (size_t i = 0; i < segments[0].size(); ++i) {
    const size_t width = segments[0][i].bf16 ? 2 : 4;
    size_t at = 0;
    for (size_t r = 0; r < ranks.size(); ++r) {
      const size_t count = segments[r][i].counts[r];
      for (size_t q = 0; q < ranks.size(); ++q) {
        if (q == r) continue;
        std::memcpy(static_cast<char*>(segments[q][i].data) + at * width,
                    static_cast<const char*>(segments[r][i].data) + at * width, count * width);
      }
      at += count;
    }
  }
}

// Every weight the kernels read, byte for byte (the segments of an unsharded model cover them).
void expect_same_weights(MistralModel& a, MistralModel& b, const std::string& where) {
  const std::vector<WeightSegment> x = a.weight_segments(), y = b.weight_segments();
  EXPECT(x.size() == y.size(), where);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT(x[i].count == y[i].count && x[i].bf16 == y[i].bf16, where);
    EXPECT(std::memcmp(x[i].data, y[i].data, x[i].count * (x[i].bf16 ? 2 : 4)) == 0, where, ": segment ", i, " differs");
  }
}

void train_step(MistralModel& m, const Batch& b, const AdamWOptions& hp) {
  std::vector<float> logp(b.ids.size()), dlogp(b.ids.size(), -0.25f);
  m.zero_grad();
  m.forward(b.view(), logp.data());
  m.backward(dlogp.data(), long(dlogp.size()));
  m.clip_and_step(hp);
}

}  // namespace

// Two ranks' shard steps, all-gathered, are the whole step bit for bit (f32 and bf16, the
// gradient whole on each as after ZeRO 1's all-reduce); their shard files resume on one process,
// on three ranks, and one process's file on two ranks, to the same next step.
ZN_TEST("model.zero_shard_step_and_checkpoint_equal_the_whole_step") {
  const AdamWOptions hp{1e-2, 0.9, 0.99, 1e-8, 0.1, 0.5};  // decay on matrices only; clipping on
  const MistralConfig c = tiny_config(false);
  const Params P = random_params(c);
  const Batch b = random_batch(c, {6, 5});
  for (Precision precision : {Precision::F32, Precision::BF16}) {
    const std::string mode = precision == Precision::BF16 ? "bf16" : "f32";
    auto options = [&](int rank, int count) {
      ModelOptions o;
      o.precision = precision;
      o.max_tokens = 16;
      o.dense_embedding_gradient = true;
      o.shard = {rank, count};
      return o;
    };
    auto whole = make_model(c, P, options(0, 1));
    auto r0 = make_model(c, P, options(0, 2)), r1 = make_model(c, P, options(1, 2));
    EXPECT(r0->memory_plan().optimizer + r1->memory_plan().optimizer == whole->memory_plan().optimizer, mode);
    for (int step = 0; step < 3; ++step) {
      for (MistralModel* m : {whole.get(), r0.get(), r1.get()}) train_step(*m, b, hp);
      gather_weights({r0.get(), r1.get()});
      expect_same_weights(*whole, *r0, mode + " step " + std::to_string(step + 1) + " rank 0");
      expect_same_weights(*whole, *r1, mode + " step " + std::to_string(step + 1) + " rank 1");
    }
    // Stage 2's shard sums of squares add up to the whole sum (to rounding: grouped differently).
    const double squares = r0->shard_grad_sum_of_squares() + r1->shard_grad_sum_of_squares();
    double reference = 0;
    for (const ParameterSpec& p : whole->parameters())
      for (float g : gradient_of(*whole, p.name)) reference += double(g) * g;
    EXPECT(std::fabs(squares - reference) <= 1e-12 * reference, squares, " vs ", reference);

    // The checkpoint: rank 0's weights file (bf16: the weights widened) and both shard files;
    // and one process's files.
    TempFile s0(".safetensors"), s1(".safetensors"), weights(".safetensors"), full(".safetensors"),
        full_weights(".safetensors");
    r0->save_optimizer_shard(s0.path);
    r1->save_optimizer_shard(s1.path);
    std::vector<std::string> names;
    for (const ParameterSpec& p : whole->parameters()) names.push_back(p.name);
    r0->save_weights(weights.path, names, SaveDType::F32, {});
    whole->save_optimizer_state(full.path);
    whole->save_weights(full_weights.path, names, SaveDType::F32, {});  // one process's: its f32 master
    auto one = std::make_unique<MistralModel>(c, options(0, 1));
    std::vector<std::unique_ptr<MistralModel>> three, two;
    for (int r = 0; r < 3; ++r) three.push_back(std::make_unique<MistralModel>(c, options(r, 3)));
    for (int r = 0; r < 2; ++r) two.push_back(std::make_unique<MistralModel>(c, options(r, 2)));
    for (MistralModel* m : {one.get(), three[0].get(), three[1].get(), three[2].get()}) {
      m->load_weights({weights.path});
      m->load_optimizer_state(std::vector<std::string>{s1.path, s0.path});
      EXPECT(m->optimizer_step() == 3, mode);
    }
    for (auto& m : two) {
      m->load_weights({full_weights.path});
      m->load_optimizer_state(full.path);
    }
    for (MistralModel* m : {whole.get(), one.get(), three[0].get(), three[1].get(), three[2].get(), two[0].get(), two[1].get()})
      train_step(*m, b, hp);
    gather_weights({three[0].get(), three[1].get(), three[2].get()});
    gather_weights({two[0].get(), two[1].get()});
    // bf16: rank 0's weights file holds the bf16 weights widened, and the shard files' masters
    // make the resume exact; one process's holds its f32 master.
    expect_same_weights(*whole, *one, mode + ": 2 ranks' checkpoint on one process");
    expect_same_weights(*whole, *two[0], mode + ": one process's checkpoint on 2 ranks, rank 0");
    expect_same_weights(*whole, *two[1], mode + ": one process's checkpoint on 2 ranks, rank 1");
    expect_same_weights(*whole, *three[2], mode + ": 2 ranks' checkpoint on 3 ranks");
    // A missing shard is named.
    auto lonely = std::make_unique<MistralModel>(c, options(0, 1));
    zn::test::expect_error([&] { lonely->load_optimizer_state(std::vector<std::string>{s0.path}); }, "is incomplete");
  }
}
