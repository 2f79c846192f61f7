// Fused lm_head -> log-softmax -> gather, in [token chunk x vocab chunk] tiles:
//   forward:  z = h Wᵀ per tile (GEMM), running max m and s = sum exp(z - m) per token,
//             lse = m + log s, logp = z[label] - lse.
//   backward: recompute z per tile, dz = g (1[v == label] - exp(z - lse)),
//             dh += dz W (GEMM, beta 1 across vocab tiles), dW += dzᵀ h (GEMM, trans_a).
//   forward_backward (dlogp known up front): z = h Wᵀ for a panel of tokens over the whole
//             vocabulary, lse per row, dz in place, dh = dz W, dW += dzᵀ h: one logits GEMM.
// The tiles are walked in order on the calling thread; the GEMMs and the per-row softmax work
// are what run in parallel. Each tile's dW slice and each token chunk's dh rows are written by
// one GEMM at a time, so no two threads ever add into the same gradient.
// The per-row exp loops have an AVX2 path (the vector exp of core/simd_math.h, the tail masked;
// sums of exp still in f64, over 8 lanes then across them).
#include "kernels/cpu/logprob.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "core/bf16.h"
#include "core/errors.h"
#include "core/simd_math.h"
#include "core/thread_pool.h"
#include "kernels/cpu/gemm.h"

namespace zn::cpu {

namespace {

// Scratch is one [256 x 2048] f32 logits tile (2 MiB), plus in backward two [256 x d] f32
// token panels (8 MiB at d = 4096): ~10 MiB against 262 MB for [2048 x 32000] f32 logits.
constexpr long kTokenChunk = 256;
constexpr long kVocabChunk = 2048;
// The fused kernel's [rows x V] logits panel: rows as many as fit this many bytes, a multiple of
// 16 in [16, kTokenChunk] (256 rows at V = 32000). Each panel adds into all of dW ([V, d] f32,
// 65 MB at d = 512) once, so fewer rows cost memory traffic: on a 2-core Zen 3, [2048, 512,
// 32000] took 1.97 s at 128 rows and 1.72 s at 256, against 2.32 s for forward + backward.
constexpr size_t kFusedLogitsBytes = size_t(32) << 20;

long fused_rows(const LogprobShape& s) {
  const long fit = long(kFusedLogitsBytes / (sizeof(float) * size_t(s.vocab))) / 16 * 16;
  return std::min({std::max(fit, 16L), kTokenChunk, std::max(s.tokens, 1L)});
}

// Rows a workspace of `floats` holds (a multiple of 16, at most kTokenChunk), 0 if under 16.
long workspace_rows(const LogprobShape& s, size_t floats) {
  const long fit = long(floats / size_t(s.vocab + 2 * s.dim)) / 16 * 16;
  return std::min(fit, kTokenChunk);
}

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

// A call's scratch in pieces, taken in order (8-byte pieces first, so each stays aligned): the
// caller's when it holds `bytes`, else an allocation of the kernel's own.
class Scratch {
 public:
  Scratch(LogprobScratch given, size_t bytes) {
    if (given.data && given.bytes >= bytes) {
      base_ = static_cast<char*>(given.data);
    } else {
      owned_ = std::make_unique<char[]>(bytes);
      base_ = owned_.get();
    }
  }
  template <typename T>
  T* take(size_t count) {
    T* piece = reinterpret_cast<T*>(base_ + used_);
    used_ += count * sizeof(T);
    return piece;
  }

 private:
  std::unique_ptr<char[]> owned_;
  char* base_ = nullptr;
  size_t used_ = 0;
};

float row_max_scalar(const float* z, long n, float start) {
  for (long j = 0; j < n; ++j) start = std::max(start, z[j]);
  return start;
}

double sum_exp_scalar(const float* z, long n, float shift) {
  double sum = 0;
  for (long j = 0; j < n; ++j) sum += std::exp(z[j] - shift);
  return sum;
}

// z[j] = -g exp(z[j] - lse): the softmax part of dlogits.
void scaled_softmax_scalar(float* z, long n, float g, float lse) {
  for (long j = 0; j < n; ++j) z[j] = -g * std::exp(z[j] - lse);
}

#if defined(__x86_64__)

ZN_TARGET_AVX2 float row_max_avx2(const float* z, long n, float start) {
  __m256 m = _mm256_set1_ps(start);
  long j = 0;
  for (; j + 8 <= n; j += 8) m = _mm256_max_ps(_mm256_loadu_ps(z + j), m);
  if (j < n) {
    const __m256i lanes = simd::first_lanes(n - j);
    const __m256 tail = _mm256_blendv_ps(m, _mm256_maskload_ps(z + j, lanes), _mm256_castsi256_ps(lanes));
    m = _mm256_max_ps(tail, m);
  }
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}

ZN_TARGET_AVX2 inline void add_f64(__m256 e, __m256d& low, __m256d& high) {
  low = _mm256_add_pd(low, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
  high = _mm256_add_pd(high, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
}

ZN_TARGET_AVX2 double sum_exp_avx2(const float* z, long n, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256d low = _mm256_setzero_pd(), high = _mm256_setzero_pd();
  long j = 0;
  for (; j + 8 <= n; j += 8) add_f64(simd::exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(z + j), s)), low, high);
  if (j < n) {
    const __m256i lanes = simd::first_lanes(n - j);
    const __m256 e = simd::exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(z + j, lanes), s));
    add_f64(_mm256_and_ps(e, _mm256_castsi256_ps(lanes)), low, high);
  }
  const __m256d sum = _mm256_add_pd(low, high);
  const __m128d pair = _mm_add_pd(_mm256_castpd256_pd128(sum), _mm256_extractf128_pd(sum, 1));
  return _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
}

ZN_TARGET_AVX2 void scaled_softmax_avx2(float* z, long n, float g, float lse) {
  const __m256 minus_g = _mm256_set1_ps(-g), shift = _mm256_set1_ps(lse);
  long j = 0;
  for (; j + 8 <= n; j += 8) {
    _mm256_storeu_ps(z + j, _mm256_mul_ps(minus_g, simd::exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(z + j), shift))));
  }
  if (j < n) {
    const __m256i lanes = simd::first_lanes(n - j);
    const __m256 e = simd::exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(z + j, lanes), shift));
    _mm256_maskstore_ps(z + j, lanes, _mm256_mul_ps(minus_g, e));
  }
}

#endif

// The exp loops of one path.
struct RowKernels {
  float (*row_max)(const float*, long, float);
  double (*sum_exp)(const float*, long, float);
  void (*scaled_softmax)(float*, long, float, float);
};

RowKernels row_kernels(CpuPath path) {
#if defined(__x86_64__)
  if (path != CpuPath::Scalar) return {row_max_avx2, sum_exp_avx2, scaled_softmax_avx2};
#endif
  return {row_max_scalar, sum_exp_scalar, scaled_softmax_scalar};
}

void absorb_tile_row(const RowKernels& K, const float* z, long columns, RunningLse& state) {
  const float tile_max = K.row_max(z, columns, state.max);
  if (tile_max > state.max) {
    state.sum *= std::exp(double(state.max) - double(tile_max));  // exp(-inf) = 0 at the start
    state.max = tile_max;
  }
  state.sum += K.sum_exp(z, columns, tile_max);
}

// panel[r] = hidden[tokens[r]], rounded to bf16 where the GEMM meets bf16 weights (what the
// forward GEMM saw), so the recomputed logits and dW use the forward's operands.
void gather_rows(const float* hidden, long d, const long* tokens, long count, bool round_bf16,
                 float* panel) {
  parallel_for(size_t(count), rows_grain(d), [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) {
      const float* src = hidden + tokens[r] * d;
      float* dst = panel + r * long(d);
      for (long j = 0; j < d; ++j) dst[j] = round_bf16 ? bf16_to_f32(f32_to_bf16(src[j])) : src[j];
    }
  });
}

// out[tokens[r]] = panel[r].
void scatter_rows(const float* panel, long d, const long* tokens, long count, float* out) {
  parallel_for(size_t(count), rows_grain(d), [&](size_t begin, size_t end) {
    for (size_t r = begin; r < end; ++r) std::copy_n(panel + r * d, d, out + tokens[r] * d);
  });
}

}  // namespace

size_t logprob_fused_workspace_floats(const LogprobShape& shape, long rows) {
  return size_t(rows) * size_t(shape.vocab + 2 * shape.dim);
}

size_t logprob_fused_scratch_bytes(const LogprobShape& shape) {
  return logprob_fused_workspace_floats(shape, fused_rows(shape)) * sizeof(float) +
         size_t(shape.tokens) * sizeof(long);
}

size_t logprob_scratch_bytes(const LogprobShape& shape, bool backward) {
  const size_t tokens = size_t(std::min(shape.tokens, kTokenChunk));
  const size_t vocab = size_t(std::min(shape.vocab, kVocabChunk));
  size_t bytes = tokens * vocab * sizeof(float);
  if (backward)
    bytes += 2 * tokens * size_t(shape.dim) * sizeof(float) + size_t(shape.tokens) * sizeof(long);
  else
    bytes += tokens * (sizeof(RunningLse) + size_t(shape.dim) * sizeof(float)) + size_t(shape.tokens) * sizeof(long);
  return bytes;
}

void logprob_forward(const LogprobShape& shape, const float* hidden, const void* weight,
                     DType weight_dtype, const int32_t* labels, float* logp, float* lse, CpuPath path,
                     LogprobScratch given) {
  check_arguments("logprob_forward", shape, labels);
  const RowKernels K = row_kernels(path);
  const long N = shape.tokens, d = shape.dim, V = shape.vocab;
  Scratch scratch(given, logprob_scratch_bytes(shape, false));
  // Only labelled tokens get logits: they are packed into the GEMM's panels (a DPO batch's
  // prompt tokens, a quarter to a half of it, cost nothing), and ignored ones get logp 0, lse 0.
  long* const labelled = scratch.take<long>(size_t(N));
  long A = 0;
  for (long t = 0; t < N; ++t) {
    if (labels[t] != kIgnoreIndex) labelled[A++] = t;
    else logp[t] = lse[t] = 0.0f;
  }
  if (A == 0) return;
  const long panel_rows = std::min(A, kTokenChunk);
  RunningLse* const state = scratch.take<RunningLse>(size_t(panel_rows));
  float* const logits = scratch.take<float>(size_t(panel_rows * std::min(V, kVocabChunk)));
  float* const hidden_panel = scratch.take<float>(size_t(panel_rows * d));
  for (long a0 = 0; a0 < A; a0 += kTokenChunk) {
    const long an = std::min(kTokenChunk, A - a0);
    const long* tokens = labelled + a0;
    // The GEMM rounds the panel to bf16 itself where the weight is bf16, as it did unpacked.
    gather_rows(hidden, d, tokens, an, /*round_bf16=*/false, hidden_panel);
    std::uninitialized_fill_n(state, an, RunningLse{});
    for (long v0 = 0; v0 < V; v0 += kVocabChunk) {
      const long vn = std::min(kVocabChunk, V - v0);
      gemm(false, true, an, vn, d, 1.0f, Matrix{hidden_panel, DType::F32, d},
           weight_rows(weight, weight_dtype, v0, d), 0.0f, logits, vn);
      parallel_for(size_t(an), rows_grain(vn), [&](size_t begin, size_t end) {
        for (size_t r = begin; r < end; ++r) {
          const float* z = logits + r * vn;
          absorb_tile_row(K, z, vn, state[r]);
          const long label = labels[tokens[r]];
          if (label >= v0 && label < v0 + vn) state[r].label_logit = z[label - v0];
        }
      });
    }
    for (long r = 0; r < an; ++r) {
      const double row_lse = double(state[r].max) + std::log(state[r].sum);
      lse[tokens[r]] = float(row_lse);
      logp[tokens[r]] = float(state[r].label_logit - row_lse);
    }
  }
}

void logprob_backward(const LogprobShape& shape, const float* hidden, const void* weight,
                      DType weight_dtype, const int32_t* labels, const float* lse,
                      const float* dlogp, float* dhidden, float* dweight, CpuPath path, LogprobScratch given) {
  check_arguments("logprob_backward", shape, labels);
  const RowKernels K = row_kernels(path);
  const long N = shape.tokens, d = shape.dim, V = shape.vocab;
  Scratch scratch(given, logprob_scratch_bytes(shape, true));
  // Only tokens with a label and a non-zero upstream gradient have non-zero dlogits: pack those
  // (prompt tokens are often half a DPO batch) and give every other row dhidden = 0.
  long* const active = scratch.take<long>(size_t(N));
  long A = 0;
  for (long t = 0; t < N; ++t)
    if (labels[t] != kIgnoreIndex && dlogp[t] != 0.0f) active[A++] = t;
  std::fill(dhidden, dhidden + N * d, 0.0f);
  if (A == 0) return;

  const long panel_rows = std::min(A, kTokenChunk);
  float* const logits = scratch.take<float>(size_t(panel_rows * std::min(V, kVocabChunk)));
  float* const hidden_panel = scratch.take<float>(size_t(panel_rows * d));
  float* const dhidden_panel = scratch.take<float>(size_t(panel_rows * d));
  for (long a0 = 0; a0 < A; a0 += kTokenChunk) {
    const long an = std::min(kTokenChunk, A - a0);
    gather_rows(hidden, d, active + a0, an, weight_dtype == DType::BF16, hidden_panel);
    const Matrix panel{hidden_panel, DType::F32, d};
    for (long v0 = 0; v0 < V; v0 += kVocabChunk) {
      const long vn = std::min(kVocabChunk, V - v0);
      const Matrix w = weight_rows(weight, weight_dtype, v0, d);
      gemm(false, true, an, vn, d, 1.0f, panel, w, 0.0f, logits, vn);
      parallel_for(size_t(an), rows_grain(vn), [&](size_t begin, size_t end) {
        for (size_t r = begin; r < end; ++r) {
          const long t = active[a0 + long(r)];
          const float g = dlogp[t], row_lse = lse[t];
          float* z = logits + r * vn;
          K.scaled_softmax(z, vn, g, row_lse);
          const long label = labels[t];
          if (label >= v0 && label < v0 + vn) z[label - v0] += g;
        }
      });
      const Matrix dlogits{logits, DType::F32, vn};
      gemm(false, false, an, d, vn, 1.0f, dlogits, w, v0 == 0 ? 0.0f : 1.0f, dhidden_panel, d);
      if (dweight) gemm(true, false, vn, d, an, 1.0f, dlogits, panel, 1.0f, dweight + v0 * d, d);
    }
    scatter_rows(dhidden_panel, d, active + a0, an, dhidden);
  }
}

void logprob_forward_backward(const LogprobShape& shape, const float* hidden, const void* weight,
                              DType weight_dtype, const int32_t* labels, const float* dlogp,
                              float* logp, float* dhidden, float* dweight, LogprobWorkspace workspace,
                              CpuPath path) {
  check_arguments("logprob_forward_backward", shape, labels);
  const RowKernels K = row_kernels(path);
  const long N = shape.tokens, d = shape.dim, V = shape.vocab;
  // Every labelled token needs its logp, so all of them are packed (a zero dlogp only makes a
  // zero row of dlogits); ignored tokens get logp 0 and dhidden 0. Only ignored rows are
  // cleared up front, so that dhidden may be hidden.
  std::vector<long> labelled;
  for (long t = 0; t < N; ++t) {
    logp[t] = 0.0f;
    if (labels[t] != kIgnoreIndex) labelled.push_back(t);
    else std::fill(dhidden + t * d, dhidden + (t + 1) * d, 0.0f);
  }
  const long A = long(labelled.size());
  if (A == 0) return;

  long rows = workspace.data ? workspace_rows(shape, workspace.floats) : 0;
  std::vector<float> owned;
  if (rows < 16) {
    rows = fused_rows(shape);
    owned.resize(logprob_fused_workspace_floats(shape, rows));
    workspace = {owned.data(), owned.size()};
  }
  rows = std::min(rows, A);
  float* const logits = workspace.data;
  float* const hidden_panel = logits + rows * V;
  float* const dhidden_panel = hidden_panel + rows * d;
  const Matrix w{weight, weight_dtype, d};
  for (long a0 = 0; a0 < A; a0 += rows) {
    const long an = std::min(rows, A - a0);
    const long* tokens = labelled.data() + a0;
    gather_rows(hidden, d, tokens, an, weight_dtype == DType::BF16, hidden_panel);
    const Matrix panel{hidden_panel, DType::F32, d};
    gemm(false, true, an, V, d, 1.0f, panel, w, 0.0f, logits, V);
    parallel_for(size_t(an), rows_grain(V), [&](size_t begin, size_t end) {
      for (size_t r = begin; r < end; ++r) {
        const long t = tokens[r], label = labels[t];
        float* z = logits + r * V;
        const float row_max = K.row_max(z, V, -std::numeric_limits<float>::infinity());
        const float row_lse = float(double(row_max) + std::log(K.sum_exp(z, V, row_max)));
        logp[t] = z[label] - row_lse;
        const float g = dlogp[t];
        K.scaled_softmax(z, V, g, row_lse);
        z[label] += g;
      }
    });
    const Matrix dlogits{logits, DType::F32, V};
    gemm(false, false, an, d, V, 1.0f, dlogits, w, 0.0f, dhidden_panel, d);
    if (dweight) gemm(true, false, V, d, an, 1.0f, dlogits, panel, 1.0f, dweight, d);
    scatter_rows(dhidden_panel, d, tokens, an, dhidden);
  }
}

void logprob_forward(const LogprobShape& shape, const float* hidden, const void* weight,
                     DType weight_dtype, const int32_t* labels, float* logp, float* lse, LogprobScratch scratch) {
  logprob_forward(shape, hidden, weight, weight_dtype, labels, logp, lse, cpu_path(), scratch);
}

void logprob_backward(const LogprobShape& shape, const float* hidden, const void* weight,
                      DType weight_dtype, const int32_t* labels, const float* lse,
                      const float* dlogp, float* dhidden, float* dweight, LogprobScratch scratch) {
  logprob_backward(shape, hidden, weight, weight_dtype, labels, lse, dlogp, dhidden, dweight, cpu_path(), scratch);
}

void logprob_forward_backward(const LogprobShape& shape, const float* hidden, const void* weight,
                              DType weight_dtype, const int32_t* labels, const float* dlogp,
                              float* logp, float* dhidden, float* dweight, LogprobWorkspace workspace) {
  logprob_forward_backward(shape, hidden, weight, weight_dtype, labels, dlogp, logp, dhidden,
                           dweight, workspace, cpu_path());
}

}  // namespace zn::cpu
