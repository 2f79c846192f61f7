// Fused lm_head -> log-softmax -> gather, in [token chunk x vocab chunk] tiles:
//   forward:  z = h Wᵀ per tile (GEMM), running max m and s = sum exp(z - m) per token,
//             lse = m + log s, logp = z[label] - lse.
//   backward: recompute z per tile, dz = g (1[v == label] - exp(z - lse)),
//             dh += dz W (GEMM, beta 1 across vocab tiles), dW += dzᵀ h (GEMM, trans_a).
// The tiles are walked in order on the calling thread; the GEMMs and the per-row softmax work
// are what run in parallel. Each tile's dW slice and each token chunk's dh rows are written by
// one GEMM at a time, so no two threads ever add into the same gradient.
#include "kernels/cpu/logprob.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/bf16.h"
#include "core/errors.h"
#include "core/thread_pool.h"
#include "kernels/cpu/gemm.h"

namespace zn::cpu {

namespace {

// Scratch is one [256 x 2048] f32 logits tile (2 MiB), plus in backward two [256 x d] f32
// token panels (8 MiB at d = 4096): ~10 MiB against 262 MB for [2048 x 32000] f32 logits.
constexpr long kTokenChunk = 256;
constexpr long kVocabChunk = 2048;

void check_arguments(const char* op, const LogprobShape& s, const int32_t* labels) {
  ZN_CHECK(s.tokens >= 0 && s.dim > 0 && s.vocab > 0, op, ": bad shape tokens=", s.tokens,
           " dim=", s.dim, " vocab=", s.vocab);
  for (long t = 0; t < s.tokens; ++t)
    ZN_CHECK(labels[t] == kIgnoreIndex || (labels[t] >= 0 && labels[t] < s.vocab), op, ": token ",
             t, " has label ", labels[t], " outside the vocabulary [0, ", s.vocab, ") and is not ",
             kIgnoreIndex, " (ignored)");
}

Matrix weight_rows(const void* weight, DType dtype, long first_row, long dim) {
  const char* base = static_cast<const char*>(weight) + size_t(first_row) * dim * dtype_size(dtype);
  return Matrix{base, dtype, dim};
}

size_t rows_grain(long columns) { return size_t(std::max(1L, 16384 / std::max(1L, columns))); }

// Online log-sum-exp state of one token.
struct RunningLse {
  float max = -std::numeric_limits<float>::infinity();
  double sum = 0;  // of exp(z - max)
  float label_logit = 0;
};

void absorb_tile_row(const float* z, long columns, RunningLse& state) {
  float tile_max = state.max;
  for (long j = 0; j < columns; ++j) tile_max = std::max(tile_max, z[j]);
  if (tile_max > state.max) {
    state.sum *= std::exp(double(state.max) - double(tile_max));  // exp(-inf) = 0 at the start
    state.max = tile_max;
  }
  double sum = 0;
  for (long j = 0; j < columns; ++j) sum += std::exp(z[j] - tile_max);
  state.sum += sum;
}

}  // namespace

size_t logprob_scratch_bytes(const LogprobShape& shape, bool backward) {
  const size_t tokens = size_t(std::min(shape.tokens, kTokenChunk));
  const size_t vocab = size_t(std::min(shape.vocab, kVocabChunk));
  size_t bytes = tokens * vocab * sizeof(float);
  if (backward)
    bytes += 2 * tokens * size_t(shape.dim) * sizeof(float) + size_t(shape.tokens) * sizeof(long);
  else
    bytes += tokens * sizeof(RunningLse);
  return bytes;
}

void logprob_forward(const LogprobShape& shape, const float* hidden, const void* weight,
                     DType weight_dtype, const int32_t* labels, float* logp, float* lse) {
  check_arguments("logprob_forward", shape, labels);
  const long N = shape.tokens, d = shape.dim, V = shape.vocab;
  std::vector<float> logits(size_t(std::min(N, kTokenChunk) * std::min(V, kVocabChunk)));
  std::vector<RunningLse> state(size_t(std::min(N, kTokenChunk)));
  for (long t0 = 0; t0 < N; t0 += kTokenChunk) {
    const long tn = std::min(kTokenChunk, N - t0);
    std::fill(state.begin(), state.begin() + tn, RunningLse{});
    for (long v0 = 0; v0 < V; v0 += kVocabChunk) {
      const long vn = std::min(kVocabChunk, V - v0);
      gemm(false, true, tn, vn, d, 1.0f, Matrix{hidden + t0 * d, DType::F32, d},
           weight_rows(weight, weight_dtype, v0, d), 0.0f, logits.data(), vn);
      parallel_for(size_t(tn), rows_grain(vn), [&](size_t begin, size_t end) {
        for (size_t r = begin; r < end; ++r) {
          const float* z = logits.data() + r * vn;
          absorb_tile_row(z, vn, state[r]);
          const long label = labels[t0 + long(r)];
          if (label >= v0 && label < v0 + vn) state[r].label_logit = z[label - v0];
        }
      });
    }
    for (long r = 0; r < tn; ++r) {
      const double row_lse = double(state[r].max) + std::log(state[r].sum);
      lse[t0 + r] = float(row_lse);
      logp[t0 + r] = labels[t0 + r] == kIgnoreIndex ? 0.0f : float(state[r].label_logit - row_lse);
    }
  }
}

void logprob_backward(const LogprobShape& shape, const float* hidden, const void* weight,
                      DType weight_dtype, const int32_t* labels, const float* lse,
                      const float* dlogp, float* dhidden, float* dweight) {
  check_arguments("logprob_backward", shape, labels);
  const long N = shape.tokens, d = shape.dim, V = shape.vocab;
  // Only tokens with a label and a non-zero upstream gradient have non-zero dlogits: pack those
  // (prompt tokens are often half a DPO batch) and give every other row dhidden = 0.
  std::vector<long> active;
  for (long t = 0; t < N; ++t)
    if (labels[t] != kIgnoreIndex && dlogp[t] != 0.0f) active.push_back(t);
  std::fill(dhidden, dhidden + N * d, 0.0f);
  const long A = long(active.size());
  if (A == 0) return;

  const long panel_rows = std::min(A, kTokenChunk);
  std::vector<float> logits(size_t(panel_rows * std::min(V, kVocabChunk)));
  std::vector<float> hidden_panel(size_t(panel_rows * d)), dhidden_panel(size_t(panel_rows * d));
  const bool round_hidden = weight_dtype == DType::BF16;  // what the forward GEMM saw
  for (long a0 = 0; a0 < A; a0 += kTokenChunk) {
    const long an = std::min(kTokenChunk, A - a0);
    parallel_for(size_t(an), rows_grain(d), [&](size_t begin, size_t end) {
      for (size_t r = begin; r < end; ++r) {
        const float* src = hidden + active[a0 + long(r)] * d;
        float* dst = hidden_panel.data() + r * d;
        for (long j = 0; j < d; ++j) dst[j] = round_hidden ? bf16_to_f32(f32_to_bf16(src[j])) : src[j];
      }
    });
    const Matrix panel{hidden_panel.data(), DType::F32, d};
    for (long v0 = 0; v0 < V; v0 += kVocabChunk) {
      const long vn = std::min(kVocabChunk, V - v0);
      const Matrix w = weight_rows(weight, weight_dtype, v0, d);
      gemm(false, true, an, vn, d, 1.0f, panel, w, 0.0f, logits.data(), vn);
      parallel_for(size_t(an), rows_grain(vn), [&](size_t begin, size_t end) {
        for (size_t r = begin; r < end; ++r) {
          const long t = active[a0 + long(r)];
          const float g = dlogp[t], row_lse = lse[t];
          float* z = logits.data() + r * vn;
          for (long j = 0; j < vn; ++j) z[j] = -g * std::exp(z[j] - row_lse);
          const long label = labels[t];
          if (label >= v0 && label < v0 + vn) z[label - v0] += g;
        }
      });
      const Matrix dlogits{logits.data(), DType::F32, vn};
      gemm(false, false, an, d, vn, 1.0f, dlogits, w, v0 == 0 ? 0.0f : 1.0f, dhidden_panel.data(), d);
      gemm(true, false, vn, d, an, 1.0f, dlogits, panel, 1.0f, dweight + v0 * d, d);
    }
    parallel_for(size_t(an), rows_grain(d), [&](size_t begin, size_t end) {
      for (size_t r = begin; r < end; ++r)
        std::copy_n(dhidden_panel.data() + r * d, d, dhidden + active[a0 + long(r)] * d);
    });
  }
}

}  // namespace zn::cpu
