// Attention, FlashAttention-2 style (Dao 2023), over packed documents with GQA and a window:
//   forward:  S = scale·Q·Kᵀ (masked), O = softmax(S)·V, lse = log Σ_j exp(S_ij)
//   backward: P = exp(S - lse), dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P∘(dP - rowsum(dO∘O)),
//             dQ = scale·dS·K, dK = scale·dSᵀ·Q
// The query heads that share a kv head are processed together: a query block is G heads × Br
// tokens (token-major rows), so every packed K/V tile serves G times more rows. Scores exist only
// as [block rows, key tile] scratch; key tiles that the mask hides from a block are never visited.
// The arithmetic on tiles is four kernels per SIMD path (attention_internal.h): scalar and AVX2
// here, AVX-512 in attention_avx512.cpp, picked by cpu_path() or the caller's CpuPath. AVX2 and
// AVX-512 give the same bits, so the path a machine takes changes speed, not results.
#include "kernels/cpu/attention.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <vector>

#include "core/errors.h"
#include "core/simd_math.h"
#include "core/thread_pool.h"
#include "kernels/cpu/attention_internal.h"

namespace zn::cpu {

namespace {

using namespace attention_detail;

constexpr long kBlockRows = 64;  // target query rows (tokens × heads of a group) per block
constexpr long kKeyTilesPerPass = 4;  // key tiles the backward takes per walk over query blocks

long round_up(long x, long multiple) { return (x + multiple - 1) / multiple * multiple; }

struct Span {
  long begin, end;
  long size() const { return end - begin; }
};

// The problem's geometry, derived once per call.
struct Layout {
  long tokens;
  long heads, kv_heads, group, head_dim;
  long padded_dim;    // head_dim rounded up to kLanes; the padding is zeros
  long window;        // effective window: longer than any document when there is none
  long block_tokens;  // Br
  float scale;
  long q_stride() const { return heads * head_dim; }
  long kv_stride() const { return kv_heads * head_dim; }
  long max_block_rows() const { return block_tokens * group; }
};

Layout make_layout(const AttentionShape& shape) {
  Layout L;
  L.tokens = shape.tokens;
  L.heads = shape.n_heads;
  L.kv_heads = shape.n_kv_heads;
  L.group = shape.n_heads / shape.n_kv_heads;
  L.head_dim = shape.head_dim;
  L.padded_dim = round_up(shape.head_dim, kLanes);
  L.window = shape.window > 0 && shape.window <= shape.tokens ? shape.window : shape.tokens + 1;
  // About kBlockRows rows, a multiple of the 6-row register tile where the group allows.
  L.block_tokens = std::max(1L, (kBlockRows + L.group - 1) / L.group);
  for (long extra = 0; extra < 6; ++extra) {
    if ((L.block_tokens + extra) * L.group % 6 == 0) {
      L.block_tokens += extra;
      break;
    }
  }
  L.scale = shape.scale;
  return L;
}

void check_shape(const char* op, const AttentionShape& shape) {
  ZN_CHECK(shape.tokens >= 0, op, ": tokens must be >= 0, got ", shape.tokens);
  ZN_CHECK(shape.n_heads > 0 && shape.n_kv_heads > 0 && shape.n_heads % shape.n_kv_heads == 0,
           op, ": n_kv_heads (", shape.n_kv_heads, ") must be positive and divide n_heads (",
           shape.n_heads, ")");
  ZN_CHECK(shape.head_dim > 0, op, ": head_dim must be positive, got ", shape.head_dim);
  ZN_CHECK(std::isfinite(shape.scale), op, ": scale must be finite, got ", shape.scale);
}

// `name` holds count + 1 non-decreasing row offsets from 0 to tokens.
void check_offsets(const char* op, const char* name, const int32_t* offsets, int count,
                   long tokens) {
  ZN_CHECK(offsets != nullptr, op, ": ", name, " must not be null");
  ZN_CHECK(offsets[0] == 0, op, ": ", name, "[0] must be 0, got ", offsets[0]);
  for (int d = 0; d < count; ++d) {
    ZN_CHECK(offsets[d + 1] >= offsets[d], op, ": ", name, " must not decrease, but [", d + 1,
             "] = ", offsets[d + 1], " < [", d, "] = ", offsets[d]);
  }
  ZN_CHECK(offsets[count] == tokens, op, ": ", name, "[", count, "] = ", offsets[count],
           " must equal tokens = ", tokens);
}

void check_arguments(const char* op, const AttentionShape& shape, const int32_t* cu_seqlens,
                     int n_docs) {
  check_shape(op, shape);
  ZN_CHECK(n_docs >= 0, op, ": n_docs must be >= 0, got ", n_docs);
  check_offsets(op, "cu_seqlens", cu_seqlens, n_docs, shape.tokens);
}

void check_sequences(const char* op, const AttentionShape& shape, const AttentionSequences& seqs) {
  check_shape(op, shape);
  ZN_CHECK(seqs.n_seqs >= 0, op, ": n_seqs must be >= 0, got ", seqs.n_seqs);
  ZN_CHECK(seqs.key_rows >= 0, op, ": key_rows must be >= 0, got ", seqs.key_rows);
  check_offsets(op, "cu_seqlens_q", seqs.cu_seqlens_q, seqs.n_seqs, shape.tokens);
  ZN_CHECK(shape.tokens == 0 || seqs.q_positions != nullptr, op, ": q_positions must not be null");
  ZN_CHECK(seqs.n_seqs == 0 || (seqs.k_begin != nullptr && seqs.k_len != nullptr), op,
           ": k_begin and k_len must not be null");
  ZN_CHECK(seqs.key_rows == 0 || seqs.k_positions != nullptr, op,
           ": k_positions must not be null");
  for (long t = 0; t < shape.tokens; ++t) {
    ZN_CHECK(seqs.q_positions[t] >= 0, op, ": q_positions[", t, "] must be >= 0, got ",
             seqs.q_positions[t]);
  }
  for (int s = 0; s < seqs.n_seqs; ++s) {
    const long begin = seqs.k_begin[s], len = seqs.k_len[s];
    ZN_CHECK(begin >= 0 && len >= 0 && begin + len <= seqs.key_rows, op, ": sequence ", s,
             " has key rows k_begin[", s, "] = ", begin, " .. + k_len[", s, "] = ", len,
             ", outside the key_rows = ", seqs.key_rows, " rows of k and v");
    for (long j = begin; j < begin + len; ++j) {
      ZN_CHECK(seqs.k_positions[j] >= 0, op, ": k_positions[", j, "] (sequence ", s,
               ") must be >= 0, got ", seqs.k_positions[j]);
    }
  }
}

std::vector<Span> documents(const int32_t* cu_seqlens, int n_docs) {
  std::vector<Span> docs;
  for (int d = 0; d < n_docs; ++d) {
    if (cu_seqlens[d + 1] > cu_seqlens[d]) docs.push_back({cu_seqlens[d], cu_seqlens[d + 1]});
  }
  return docs;
}

// ---- Which keys a query sees, and which tiles that leaves ----------------------------------

// Query t of `doc` sees keys [first_key, t]; key j is seen by queries [j, j + window).
long first_key(const Layout& L, Span doc, long t) { return std::max(doc.begin, t - L.window + 1); }

// Tiles are aligned to the document start, so forward, both backward schemes and any thread
// count cut the same (query block, key tile) pairs.
Span key_tile(Span doc, long index) {
  const long begin = doc.begin + index * kKeyTile;
  return {begin, std::min(doc.end, begin + kKeyTile)};
}

Span query_block(const Layout& L, Span doc, long index) {
  const long begin = doc.begin + index * L.block_tokens;
  return {begin, std::min(doc.end, begin + L.block_tokens)};
}

long count_query_blocks(const Layout& L, Span doc) {
  return (doc.size() + L.block_tokens - 1) / L.block_tokens;
}
long count_key_tiles(Span doc) { return (doc.size() + kKeyTile - 1) / kKeyTile; }

// Key tiles [first, last) holding at least one key some query of `queries` sees.
Span key_tiles_seen_by(const Layout& L, Span doc, Span queries) {
  const long lo = first_key(L, doc, queries.begin) - doc.begin;
  const long hi = queries.end - 1 - doc.begin;
  return {lo / kKeyTile, hi / kKeyTile + 1};
}

// Query blocks [first, last) holding at least one query that sees some key of `keys`.
Span query_blocks_seeing(const Layout& L, Span doc, Span keys) {
  const long lo = keys.begin - doc.begin;
  const long hi = std::min(doc.end, keys.end - 1 + L.window) - 1 - doc.begin;
  return {lo / L.block_tokens, hi / L.block_tokens + 1};
}

// Scores of hidden (query, key) pairs become -inf: per row the visible keys are one interval.
void mask_scores(const Layout& L, Span doc, Span queries, Span keys, long width, float* scores) {
  const long rows = queries.size() * L.group;
  for (long r = 0; r < rows; ++r) {
    const long t = queries.begin + r / L.group;
    const long hi = std::clamp(t + 1 - keys.begin, 0L, keys.size());
    const long lo = std::clamp(first_key(L, doc, t) - keys.begin, 0L, hi);
    float* row = scores + r * kKeyTile;
    std::fill(row, row + lo, kNegInf);
    std::fill(row + hi, row + width, kNegInf);
  }
}

// ---- Per-path kernels on tiles (contract: attention_internal.h) ----------------------------

void matmul_scalar(long M, long N, long K, MatA a, MatB b, float* c, long ldc,
                   bool accumulate) {
  for (long m = 0; m < M; ++m) {
    float* cm = c + m * ldc;
    if (!accumulate) std::fill(cm, cm + N, 0.0f);
    for (long k = 0; k < K; ++k) {
      const float x = a.transposed ? a.data[k * a.ld + m] : a.data[m * a.ld + k];
      for (long n = 0; n < N; n += kLanes) {
        const float* bk = b.data + n / kLanes * b.panel + k * b.ld;
        for (long i = 0; i < kLanes; ++i) cm[n + i] += x * bk[i];
      }
    }
  }
}

void softmax_scalar(float* scores, long rows, long width, float* row_max, float* row_sum,
                    float* rescale) {
  for (long r = 0; r < rows; ++r) {
    float* s = scores + r * kKeyTile;
    float m = row_max[r];
    for (long c = 0; c < width; ++c) m = std::max(m, s[c]);
    if (m == kNegInf) {  // nothing visible yet: keep the state, contribute nothing
      std::fill(s, s + width, 0.0f);
      rescale[r] = 1.0f;
      continue;
    }
    float sum = 0;
    for (long c = 0; c < width; ++c) {
      s[c] = s[c] == kNegInf ? 0.0f : std::exp(s[c] - m);
      sum += s[c];
    }
    rescale[r] = std::exp(row_max[r] - m);
    row_sum[r] = row_sum[r] * rescale[r] + sum;
    row_max[r] = m;
  }
}

void probabilities_scalar(float* scores, long rows, long width, const float* lse) {
  for (long r = 0; r < rows; ++r) {
    float* s = scores + r * kKeyTile;
    for (long c = 0; c < width; ++c) s[c] = s[c] == kNegInf ? 0.0f : std::exp(s[c] - lse[r]);
  }
}

void score_grad_scalar(const float* probs, float* dprobs, long rows, long width,
                       const float* delta) {
  for (long r = 0; r < rows; ++r) {
    const float* p = probs + r * kKeyTile;
    float* dp = dprobs + r * kKeyTile;
    for (long c = 0; c < width; ++c) dp[c] = p[c] * (dp[c] - delta[r]);
  }
}

#if defined(__x86_64__)
#define ZN_AVX2 __attribute__((target("avx2,fma")))

using simd::exp_avx2;

// exp(x - shift), exactly 0 where x is -inf (a masked score).
ZN_AVX2 inline __m256 masked_exp_avx2(__m256 x, __m256 shift) {
  const __m256 visible = _mm256_cmp_ps(x, _mm256_set1_ps(kNegInf), _CMP_NEQ_OQ);
  return _mm256_and_ps(exp_avx2(_mm256_sub_ps(x, shift)), visible);
}

ZN_AVX2 inline float horizontal_max(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

// A register tile of C: R rows × 16 columns in 2R accumulators, B's two vectors loaded once
// per k and A broadcast from memory (R <= 6 keeps it all in the 16 ymm registers).
template <int R, bool kTransposedA>
ZN_AVX2 inline void matmul_tile_avx2(long K, const float* a, long lda, const float* b, long ldb,
                                     float* c, long ldc, bool accumulate) {
  __m256 lo[R], hi[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    lo[r] = accumulate ? _mm256_loadu_ps(c + r * ldc) : _mm256_setzero_ps();
    hi[r] = accumulate ? _mm256_loadu_ps(c + r * ldc + 8) : _mm256_setzero_ps();
  }
  for (long k = 0; k < K; ++k) {
    const __m256 b_lo = _mm256_loadu_ps(b + k * ldb);
    const __m256 b_hi = _mm256_loadu_ps(b + k * ldb + 8);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 x = _mm256_broadcast_ss(kTransposedA ? a + k * lda + r : a + r * lda + k);
      lo[r] = _mm256_fmadd_ps(x, b_lo, lo[r]);
      hi[r] = _mm256_fmadd_ps(x, b_hi, hi[r]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(c + r * ldc, lo[r]);
    _mm256_storeu_ps(c + r * ldc + 8, hi[r]);
  }
}

template <bool kTransposedA>
ZN_AVX2 void matmul_avx2_impl(long M, long N, long K, MatA a, MatB b, float* c, long ldc,
                              bool accumulate) {
  for (long n = 0; n < N; n += kLanes) {
    const float* bn = b.data + n / kLanes * b.panel;
    for (long m = 0; m < M; m += 6) {
      const float* am = kTransposedA ? a.data + m : a.data + m * a.ld;
      float* cm = c + m * ldc + n;
      switch (std::min(6L, M - m)) {
        case 6: matmul_tile_avx2<6, kTransposedA>(K, am, a.ld, bn, b.ld, cm, ldc, accumulate); break;
        case 5: matmul_tile_avx2<5, kTransposedA>(K, am, a.ld, bn, b.ld, cm, ldc, accumulate); break;
        case 4: matmul_tile_avx2<4, kTransposedA>(K, am, a.ld, bn, b.ld, cm, ldc, accumulate); break;
        case 3: matmul_tile_avx2<3, kTransposedA>(K, am, a.ld, bn, b.ld, cm, ldc, accumulate); break;
        case 2: matmul_tile_avx2<2, kTransposedA>(K, am, a.ld, bn, b.ld, cm, ldc, accumulate); break;
        default: matmul_tile_avx2<1, kTransposedA>(K, am, a.ld, bn, b.ld, cm, ldc, accumulate);
      }
    }
  }
}

ZN_AVX2 void matmul_avx2(long M, long N, long K, MatA a, MatB b, float* c, long ldc,
                         bool accumulate) {
  if (a.transposed) {
    matmul_avx2_impl<true>(M, N, K, a, b, c, ldc, accumulate);
  } else {
    matmul_avx2_impl<false>(M, N, K, a, b, c, ldc, accumulate);
  }
}

ZN_AVX2 void softmax_avx2(float* scores, long rows, long width, float* row_max, float* row_sum,
                          float* rescale) {
  for (long r = 0; r < rows; ++r) {
    float* s = scores + r * kKeyTile;
    __m256 vmax = _mm256_set1_ps(row_max[r]);
    for (long c = 0; c < width; c += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + c));
    const float m = horizontal_max(vmax);
    if (m == kNegInf) {  // nothing visible yet: keep the state, contribute nothing
      std::fill(s, s + width, 0.0f);
      rescale[r] = 1.0f;
      continue;
    }
    const __m256 shift = _mm256_set1_ps(m);
    __m256 sum = _mm256_setzero_ps();
    for (long c = 0; c < width; c += 8) {
      const __m256 p = masked_exp_avx2(_mm256_loadu_ps(s + c), shift);
      _mm256_storeu_ps(s + c, p);
      sum = _mm256_add_ps(sum, p);
    }
    rescale[r] = std::exp(row_max[r] - m);
    // One rounding, spelled out: GCC would contract a*b + c into an FMA here anyway (FMA target,
    // -ffp-contract=fast), and the AVX-512 kernel must round this sum the same way.
    row_sum[r] = std::fma(row_sum[r], rescale[r], simd::horizontal_sum_avx2(sum));
    row_max[r] = m;
  }
}

ZN_AVX2 void probabilities_avx2(float* scores, long rows, long width, const float* lse) {
  for (long r = 0; r < rows; ++r) {
    float* s = scores + r * kKeyTile;
    const __m256 shift = _mm256_set1_ps(lse[r]);
    for (long c = 0; c < width; c += 8) {
      _mm256_storeu_ps(s + c, masked_exp_avx2(_mm256_loadu_ps(s + c), shift));
    }
  }
}

ZN_AVX2 void score_grad_avx2(const float* probs, float* dprobs, long rows, long width,
                             const float* delta) {
  for (long r = 0; r < rows; ++r) {
    const float* p = probs + r * kKeyTile;
    float* dp = dprobs + r * kKeyTile;
    const __m256 d = _mm256_set1_ps(delta[r]);
    for (long c = 0; c < width; c += 8) {
      const __m256 g = _mm256_sub_ps(_mm256_loadu_ps(dp + c), d);
      _mm256_storeu_ps(dp + c, _mm256_mul_ps(_mm256_loadu_ps(p + c), g));
    }
  }
}
#endif

Kernels kernels_for(CpuPath path) {
  ZN_CHECK(cpu_path_supported(path), "attention: this CPU cannot run the ", cpu_path_name(path),
           " path (it has: ", cpu_features_string(), ")");
#if defined(__x86_64__)
  if (path == CpuPath::Avx512Bf16) return avx512_kernels();
  if (path == CpuPath::Avx2) return {matmul_avx2, softmax_avx2, probabilities_avx2, score_grad_avx2};
#endif
  return {matmul_scalar, softmax_scalar, probabilities_scalar, score_grad_scalar};
}

// ---- Operands, laid out once per call for the tile matmuls ---------------------------------
// head_dim is padded with zeros to P = padded_dim. K and V are cut into each document's key
// tiles, and every tile is stored the way the matmul that reads it wants its B operand, panel by
// panel, so it streams from memory in order: "columns" tiles [Bc/16][P][16] hold Kᵀ or Vᵀ (for
// S = Q·Kᵀ and dP = dO·Vᵀ), "rows" tiles [P/16][Bc][16] hold K or V (for O = P·V, dQ = dS·K).
// The backward also keeps Q (times scale), dO and the dQ accumulator as [Hkv][T][G][P], a
// group's heads adjacent, so a query block is one contiguous matrix, with lse and delta in that
// row order. All of it is O(T·H·D), like the inputs; nothing is O(T²).

using Buffer = std::unique_ptr<float[]>;

Buffer new_buffer(long size) { return Buffer(new float[size_t(size)]); }

enum class TileLayout { Columns, Rows };

struct KeyTiles {
  std::vector<long> first;  // per document, the index of its first tile
  long count = 0;           // tiles per kv head
  long size = 0;            // floats per tile
  Buffer owned;             // data, when the caller gave no memory for it
  float* data = nullptr;

  const float* tile(long kv_head, long doc, long index) const {
    return data + (kv_head * count + first[size_t(doc)] + index) * size;
  }
};

// Tiles of all documents, per kv head.
long count_all_key_tiles(const std::vector<Span>& docs) {
  long count = 0;
  for (Span doc : docs) count += count_key_tiles(doc);
  return count;
}

MatB columns_operand(const Layout& L, const float* tile) { return {tile, kLanes, L.padded_dim * kLanes}; }
MatB rows_operand(const float* tile) { return {tile, kLanes, kKeyTile * kLanes}; }

// Rows `keys` of x [rows][Hkv][D], kv head h, as one tile in `layout` (zeros past the keys).
void pack_tile(const Layout& L, const float* x, long h, Span keys, TileLayout layout, float* dst) {
  const long P = L.padded_dim;
  std::fill(dst, dst + P * kKeyTile, 0.0f);
  for (long j = keys.begin; j < keys.end; ++j) {
    const float* src = x + j * L.kv_stride() + h * L.head_dim;
    const long c = j - keys.begin;
    if (layout == TileLayout::Columns) {
      float* column = dst + c / kLanes * P * kLanes + c % kLanes;
      for (long d = 0; d < L.head_dim; ++d) column[d * kLanes] = src[d];
    } else {
      for (long d = 0; d < L.head_dim; ++d) {
        dst[d / kLanes * kKeyTile * kLanes + c * kLanes + d % kLanes] = src[d];
      }
    }
  }
}

// Into dst (L.kv_heads * count_all_key_tiles(docs) tiles), or memory of their own when null.
KeyTiles pack_key_tiles(const Layout& L, const std::vector<Span>& docs, const float* x,
                        TileLayout layout, float* dst = nullptr) {
  KeyTiles tiles;
  std::vector<std::pair<long, long>> tile_docs;  // (document, tile in document)
  for (long d = 0; d < long(docs.size()); ++d) {
    tiles.first.push_back(tiles.count);
    tiles.count += count_key_tiles(docs[size_t(d)]);
    for (long t = 0; t < count_key_tiles(docs[size_t(d)]); ++t) tile_docs.push_back({d, t});
  }
  tiles.size = L.padded_dim * kKeyTile;
  if (!dst) {
    tiles.owned = new_buffer(L.kv_heads * tiles.count * tiles.size);
    dst = tiles.owned.get();
  }
  tiles.data = dst;
  parallel_for(size_t(L.kv_heads * tiles.count), 1, [&](size_t begin, size_t end) {
    for (long item = long(begin); item < long(end); ++item) {
      const auto [doc, index] = tile_docs[size_t(item % tiles.count)];
      pack_tile(L, x, item / tiles.count, key_tile(docs[size_t(doc)], index), layout,
                tiles.data + item * tiles.size);
    }
  });
  return tiles;
}

// x [T][Hq][D] as [Hkv][T][G][P], times factor, into dst (L.heads * L.tokens * P floats).
void pack_query_rows(const Layout& L, const float* x, float factor, float* dst) {
  const long P = L.padded_dim;
  parallel_for(size_t(L.tokens), 16, [&](size_t begin, size_t end) {
    for (long t = long(begin); t < long(end); ++t) {
      for (long h = 0; h < L.heads; ++h) {
        const float* src = x + t * L.q_stride() + h * L.head_dim;
        float* row = dst + ((h / L.group * L.tokens + t) * L.group + h % L.group) * P;
        for (long d = 0; d < L.head_dim; ++d) row[d] = src[d] * factor;
        std::fill(row + L.head_dim, row + P, 0.0f);
      }
    }
  });
}

// Where per-row value [head][t] goes in the [Hkv][T][G] row order.
long row_index(const Layout& L, long head, long t) {
  return (head / L.group * L.tokens + t) * L.group + head % L.group;
}

struct Scratch {
  std::vector<float> q, scores, dscores, rows_out, dk, dv, row_max, row_sum, rescale;
  std::vector<float> k_columns, v_rows;  // one key tile, packed per tile by the cached forward
};

Scratch& scratch_for(const Layout& L) {
  thread_local Scratch s;
  const size_t rows = size_t(L.max_block_rows()), dim = size_t(L.padded_dim);
  for (auto* v : {&s.q, &s.rows_out}) v->resize(std::max(v->size(), rows * dim));
  for (auto* v : {&s.scores, &s.dscores}) v->resize(std::max(v->size(), rows * kKeyTile));
  const size_t key_tiles = size_t(kKeyTilesPerPass * kKeyTile) * dim;
  for (auto* v : {&s.dk, &s.dv}) v->resize(std::max(v->size(), key_tiles));
  for (auto* v : {&s.row_max, &s.row_sum, &s.rescale}) v->resize(std::max(v->size(), rows));
  for (auto* v : {&s.k_columns, &s.v_rows}) v->resize(std::max(v->size(), kKeyTile * dim));
  return s;
}

struct WorkItem {
  long kv_head, doc, index;
  double cost;
};

// Hands items out longest first, so the short ones fill in at the end (dynamic LPT).
void run_items(std::vector<WorkItem> items, const std::function<void(const WorkItem&)>& task) {
  std::stable_sort(items.begin(), items.end(),
                   [](const WorkItem& x, const WorkItem& y) { return x.cost > y.cost; });
  parallel_for_each(items.size(), [&](size_t i) { task(items[i]); });
}

// Work of a query block: rows × key tiles it visits.
double block_cost(const Layout& L, Span doc, Span queries) {
  return double(queries.size() * L.group) * double(key_tiles_seen_by(L, doc, queries).size());
}

std::vector<WorkItem> query_block_items(const Layout& L, const std::vector<Span>& docs) {
  std::vector<WorkItem> items;
  for (long h = 0; h < L.kv_heads; ++h) {
    for (long d = 0; d < long(docs.size()); ++d) {
      const Span doc = docs[size_t(d)];
      for (long b = 0; b < count_query_blocks(L, doc); ++b) {
        items.push_back({h, d, b, block_cost(L, doc, query_block(L, doc, b))});
      }
    }
  }
  return items;
}

// ---- Forward ----------------------------------------------------------------------------

struct ForwardOperands {
  KeyTiles k_columns, v_rows;
  const float* q;
  float *out, *lse;
};

// The forward of one query block (the G heads of a kv head × rows `queries` of q) in three
// steps, shared by the packed and the cached forward: start (scaled Q, empty softmax state),
// one attend per key tile the block may see, finish.
void start_query_block(const Layout& L, const float* q, long kv_head, Span queries, Scratch& s) {
  const long rows = queries.size() * L.group, P = L.padded_dim;
  for (long t = queries.begin; t < queries.end; ++t) {
    for (long g = 0; g < L.group; ++g) {
      const float* src = q + t * L.q_stride() + (kv_head * L.group + g) * L.head_dim;
      float* row = s.q.data() + ((t - queries.begin) * L.group + g) * P;
      for (long d = 0; d < L.head_dim; ++d) row[d] = src[d] * L.scale;
      std::fill(row + L.head_dim, row + P, 0.0f);
    }
  }
  std::fill_n(s.row_max.data(), rows, kNegInf);
  std::fill_n(s.row_sum.data(), rows, 0.0f);
  std::fill_n(s.rows_out.data(), rows * P, 0.0f);
}

// S = Q·Kᵀ over `keys` keys, mask(width, S) sets hidden scores to -inf, then the online softmax
// rescales O and adds P·V.
template <typename Mask>
void attend_key_tile(const Layout& L, const Kernels& K, Scratch& s, long rows, long keys,
                     const float* k_columns, const float* v_rows, const Mask& mask) {
  const long P = L.padded_dim, width = round_up(keys, kLanes);
  K.matmul(rows, width, P, {s.q.data(), P, false}, columns_operand(L, k_columns), s.scores.data(),
           kKeyTile, false);
  mask(width, s.scores.data());
  K.softmax(s.scores.data(), rows, width, s.row_max.data(), s.row_sum.data(), s.rescale.data());
  for (long r = 0; r < rows; ++r) {
    if (s.rescale[r] == 1.0f) continue;
    float* o = s.rows_out.data() + r * P;
    for (long d = 0; d < P; ++d) o[d] *= s.rescale[r];
  }
  K.matmul(rows, P, keys, {s.scores.data(), kKeyTile, false}, rows_operand(v_rows),
           s.rows_out.data(), P, true);
}

// out = O / rowsum, lse = max + log(rowsum) (lse may be null). A row that saw no key (only in
// the cached forward: a packed query sees itself) has rowsum 0 and gets 0 and -inf.
void finish_query_block(const Layout& L, const Scratch& s, long kv_head, Span queries, float* out,
                        float* lse) {
  const long rows = queries.size() * L.group, P = L.padded_dim;
  for (long r = 0; r < rows; ++r) {
    const long t = queries.begin + r / L.group, h = kv_head * L.group + r % L.group;
    const float* o = s.rows_out.data() + r * P;
    float* dst = out + t * L.q_stride() + h * L.head_dim;
    const bool seen = s.row_sum[r] > 0.0f;
    for (long d = 0; d < L.head_dim; ++d) dst[d] = seen ? o[d] / s.row_sum[r] : 0.0f;
    if (lse) lse[h * L.tokens + t] = seen ? s.row_max[r] + std::log(s.row_sum[r]) : kNegInf;
  }
}

void forward_block(const Layout& L, const Kernels& K, const ForwardOperands& a, long kv_head,
                   long doc_index, Span doc, Span queries) {
  Scratch& s = scratch_for(L);
  start_query_block(L, a.q, kv_head, queries, s);
  const Span tiles = key_tiles_seen_by(L, doc, queries);
  for (long tile = tiles.begin; tile < tiles.end; ++tile) {
    const Span keys = key_tile(doc, tile);
    attend_key_tile(L, K, s, queries.size() * L.group, keys.size(),
                    a.k_columns.tile(kv_head, doc_index, tile),
                    a.v_rows.tile(kv_head, doc_index, tile),
                    [&](long width, float* scores) { mask_scores(L, doc, queries, keys, width, scores); });
  }
  finish_query_block(L, s, kv_head, queries, a.out, a.lse);
}

}  // namespace

void attention_forward(const AttentionShape& shape, const float* q, const float* k, const float* v,
                       const int32_t* cu_seqlens, int n_docs, float* out, float* lse,
                       CpuPath path) {
  check_arguments("attention_forward", shape, cu_seqlens, n_docs);
  const Layout L = make_layout(shape);
  const Kernels K = kernels_for(path);
  const std::vector<Span> docs = documents(cu_seqlens, n_docs);
  const ForwardOperands operands{pack_key_tiles(L, docs, k, TileLayout::Columns),
                                 pack_key_tiles(L, docs, v, TileLayout::Rows), q, out, lse};
  run_items(query_block_items(L, docs), [&](const WorkItem& item) {
    const Span doc = docs[size_t(item.doc)];
    forward_block(L, K, operands, item.kv_head, item.doc, doc, query_block(L, doc, item.index));
  });
}

void attention_forward(const AttentionShape& shape, const float* q, const float* k, const float* v,
                       const int32_t* cu_seqlens, int n_docs, float* out, float* lse) {
  attention_forward(shape, q, k, v, cu_seqlens, n_docs, out, lse, cpu_path());
}

// ---- Forward over separate query and key sequences (a KV cache) ----------------------------

namespace {

// The smallest and largest position of some rows.
struct PositionRange {
  long min, max;
};

PositionRange position_range(const int32_t* positions, Span rows) {
  const auto [lo, hi] = std::minmax_element(positions + rows.begin, positions + rows.end);
  return {*lo, *hi};
}

// Query at position pq sees key at position pk iff pk <= pq and pq - window < pk.
struct PositionMask {
  long window;  // <= 0: none

  bool sees(long pq, long pk) const { return pk <= pq && (window <= 0 || pq - window < pk); }
  // Whether some query of positions `queries` may see some key of positions `keys`.
  bool may_see(PositionRange queries, PositionRange keys) const {
    return keys.min <= queries.max && (window <= 0 || queries.min - window < keys.max);
  }
};

struct CachedOperands {
  const float *q, *k, *v;
  const int32_t *q_positions, *k_positions;
  PositionMask mask;
  float *out, *lse;
};

// Scores of hidden (query, key) pairs become -inf, by position; the G rows of a query token
// share its mask.
void mask_scores_by_position(const Layout& L, const CachedOperands& a, Span queries, Span keys,
                             long width, float* scores) {
  for (long t = queries.begin; t < queries.end; ++t) {
    float* rows = scores + (t - queries.begin) * L.group * kKeyTile;
    for (long c = 0; c < width; ++c) {
      if (c < keys.size() && a.mask.sees(a.q_positions[t], a.k_positions[keys.begin + c])) continue;
      for (long g = 0; g < L.group; ++g) rows[g * kKeyTile + c] = kNegInf;
    }
  }
}

// One query block of one sequence over that sequence's key rows, tile by tile in row order.
// Tiles are aligned to the sequence's first key row, as the packed forward aligns them to the
// document start, so a packed stream gives the same tiles, the same skips and the same bits.
// Rows of a rolling buffer are not in position order, so a tile is skipped when the ranges of
// positions show that no query of the block sees any of its keys. Each tile is packed into
// per-thread scratch when it is visited: a decoding step reads every cached key once.
void forward_cached_block(const Layout& L, const Kernels& K, const CachedOperands& a,
                          long kv_head, Span queries, Span keys) {
  Scratch& s = scratch_for(L);
  start_query_block(L, a.q, kv_head, queries, s);
  const PositionRange query_positions = position_range(a.q_positions, queries);
  for (long tile = 0; tile < count_key_tiles(keys); ++tile) {
    const Span tile_keys = key_tile(keys, tile);
    if (!a.mask.may_see(query_positions, position_range(a.k_positions, tile_keys))) continue;
    pack_tile(L, a.k, kv_head, tile_keys, TileLayout::Columns, s.k_columns.data());
    pack_tile(L, a.v, kv_head, tile_keys, TileLayout::Rows, s.v_rows.data());
    attend_key_tile(L, K, s, queries.size() * L.group, tile_keys.size(), s.k_columns.data(),
                    s.v_rows.data(), [&](long width, float* scores) {
                      mask_scores_by_position(L, a, queries, tile_keys, width, scores);
                    });
  }
  finish_query_block(L, s, kv_head, queries, a.out, a.lse);
}

}  // namespace

void attention_forward(const AttentionShape& shape, const AttentionSequences& seqs,
                       const float* q, const float* k, const float* v, float* out, float* lse,
                       CpuPath path) {
  check_sequences("attention_forward", shape, seqs);
  const Layout L = make_layout(shape);
  const Kernels K = kernels_for(path);
  const CachedOperands operands{q, k, v, seqs.q_positions, seqs.k_positions,
                                PositionMask{shape.window}, out, lse};
  std::vector<Span> queries, keys;
  std::vector<WorkItem> items;
  for (int sq = 0; sq < seqs.n_seqs; ++sq) {
    const Span rows{seqs.cu_seqlens_q[sq], seqs.cu_seqlens_q[sq + 1]};
    if (rows.size() == 0) continue;
    const Span key_rows{seqs.k_begin[sq], seqs.k_begin[sq] + seqs.k_len[sq]};
    for (long h = 0; h < L.kv_heads; ++h) {
      for (long b = 0; b < count_query_blocks(L, rows); ++b) {
        const double cost = double(query_block(L, rows, b).size() * L.group) *
                            double(count_key_tiles(key_rows) + 1);
        items.push_back({h, long(queries.size()), b, cost});
      }
    }
    queries.push_back(rows);
    keys.push_back(key_rows);
  }
  run_items(std::move(items), [&](const WorkItem& item) {
    const Span rows = queries[size_t(item.doc)];
    forward_cached_block(L, K, operands, item.kv_head, query_block(L, rows, item.index),
                         keys[size_t(item.doc)]);
  });
}

void attention_forward(const AttentionShape& shape, const AttentionSequences& seqs,
                       const float* q, const float* k, const float* v, float* out, float* lse) {
  attention_forward(shape, seqs, q, k, v, out, lse, cpu_path());
}

// ---- Backward ---------------------------------------------------------------------------

namespace {

struct BackwardOperands {
  KeyTiles k_columns, v_columns, k_rows;
  float *q_rows, *dout_rows, *lse_rows, *delta_rows, *dq_rows;
  float *dk, *dv;
};

// The operands of one (query block, key tile) pair.
struct Pair {
  Span doc, queries, keys;
  long rows, width;
  const float *q, *dout, *lse, *delta;  // [rows][P], [rows]
  float* dq;                            // [rows][P], accumulated
  const float *k_columns, *v_columns, *k_rows;
};

Pair make_pair(const Layout& L, const BackwardOperands& a, long kv_head, long doc_index, Span doc,
               Span queries, long tile) {
  const long P = L.padded_dim, first_row = (kv_head * L.tokens + queries.begin) * L.group;
  const Span keys = key_tile(doc, tile);
  return {doc,
          queries,
          keys,
          queries.size() * L.group,
          round_up(keys.size(), kLanes),
          a.q_rows + first_row * P,
          a.dout_rows + first_row * P,
          a.lse_rows + first_row,
          a.delta_rows + first_row,
          a.dq_rows + first_row * P,
          a.k_columns.tile(kv_head, doc_index, tile),
          a.v_columns.tile(kv_head, doc_index, tile),
          a.k_rows.tile(kv_head, doc_index, tile)};
}

// Recomputes P (into scores) and dS (into dscores).
void score_gradients(const Layout& L, const Kernels& K, const Pair& x, Scratch& s) {
  const long P = L.padded_dim;
  K.matmul(x.rows, x.width, P, {x.q, P, false}, columns_operand(L, x.k_columns),
           s.scores.data(), kKeyTile, false);
  mask_scores(L, x.doc, x.queries, x.keys, x.width, s.scores.data());
  K.probabilities(s.scores.data(), x.rows, x.width, x.lse);
  K.matmul(x.rows, x.width, P, {x.dout, P, false}, columns_operand(L, x.v_columns),
           s.dscores.data(), kKeyTile, false);
  K.score_grad(s.scores.data(), s.dscores.data(), x.rows, x.width, x.delta);
}

// dV_tile += Pᵀ·dO, dK_tile += dSᵀ·(scale·Q).
void accumulate_key_grads(const Layout& L, const Kernels& K, const Pair& x, float* dk, float* dv,
                          const Scratch& s) {
  const long P = L.padded_dim;
  K.matmul(x.keys.size(), P, x.rows, {s.scores.data(), kKeyTile, true}, {x.dout, P, kLanes}, dv,
           P, true);
  K.matmul(x.keys.size(), P, x.rows, {s.dscores.data(), kKeyTile, true}, {x.q, P, kLanes}, dk,
           P, true);
}

// dQ_block += dS·K (scaled once at the end). Both backward schemes accumulate the key tiles of
// a block in the same order, so they give bit-identical dq.
void accumulate_query_grads(const Layout& L, const Kernels& K, const Pair& x, Scratch& s) {
  K.matmul(x.rows, L.padded_dim, x.keys.size(), {s.dscores.data(), kKeyTile, false},
           rows_operand(x.k_rows), x.dq, L.padded_dim, true);
}

void write_key_grads(const Layout& L, const BackwardOperands& a, long kv_head, Span keys,
                     const float* dk_tile, const float* dv_tile) {
  for (long j = keys.begin; j < keys.end; ++j) {
    const long offset = j * L.kv_stride() + kv_head * L.head_dim;
    const long row = (j - keys.begin) * L.padded_dim;
    std::copy_n(dk_tile + row, L.head_dim, a.dk + offset);
    std::copy_n(dv_tile + row, L.head_dim, a.dv + offset);
  }
}

// dK, dV of key tiles [tiles) over every query block that sees them (and, with_dq, those
// blocks' dQ). Walking the blocks once for a few tiles reads each block's Q, dO and dQ once
// per pass instead of once per tile; every tile still sees the blocks in order, and every block
// the tiles in order, so the sums are the same as tile by tile.
void backward_key_tiles(const Layout& L, const Kernels& K, const BackwardOperands& a,
                        long kv_head, long doc_index, Span doc, Span tiles, bool with_dq) {
  Scratch& s = scratch_for(L);
  const long tile_floats = kKeyTile * L.padded_dim;
  std::fill_n(s.dk.data(), tiles.size() * tile_floats, 0.0f);
  std::fill_n(s.dv.data(), tiles.size() * tile_floats, 0.0f);
  const long first_block = query_blocks_seeing(L, doc, key_tile(doc, tiles.begin)).begin;
  const long end_block = query_blocks_seeing(L, doc, key_tile(doc, tiles.end - 1)).end;
  for (long b = first_block; b < end_block; ++b) {
    for (long tile = tiles.begin; tile < tiles.end; ++tile) {
      const Span blocks = query_blocks_seeing(L, doc, key_tile(doc, tile));
      if (b < blocks.begin || b >= blocks.end) continue;
      const Pair x = make_pair(L, a, kv_head, doc_index, doc, query_block(L, doc, b), tile);
      score_gradients(L, K, x, s);
      const long slot = (tile - tiles.begin) * tile_floats;
      accumulate_key_grads(L, K, x, s.dk.data() + slot, s.dv.data() + slot, s);
      if (with_dq) accumulate_query_grads(L, K, x, s);
    }
  }
  for (long tile = tiles.begin; tile < tiles.end; ++tile) {
    const long slot = (tile - tiles.begin) * tile_floats;
    write_key_grads(L, a, kv_head, key_tile(doc, tile), s.dk.data() + slot, s.dv.data() + slot);
  }
}

// dQ of one query block, recomputing scores over the key tiles it sees.
void backward_query_block(const Layout& L, const Kernels& K, const BackwardOperands& a,
                          long kv_head, long doc_index, Span doc, long block) {
  Scratch& s = scratch_for(L);
  const Span queries = query_block(L, doc, block);
  const Span tiles = key_tiles_seen_by(L, doc, queries);
  for (long tile = tiles.begin; tile < tiles.end; ++tile) {
    const Pair x = make_pair(L, a, kv_head, doc_index, doc, queries, tile);
    score_gradients(L, K, x, s);
    accumulate_query_grads(L, K, x, s);
  }
}

// The packed operands' floats: three key-tile sets, Q, dO and the dQ accumulator, lse and delta.
struct BackwardSizes {
  long key_tiles, query_rows, row_values, total;
};

BackwardSizes backward_sizes(const Layout& L, long tiles_per_kv_head) {
  BackwardSizes s;
  s.key_tiles = L.kv_heads * tiles_per_kv_head * L.padded_dim * kKeyTile;
  s.query_rows = L.heads * L.tokens * L.padded_dim;
  s.row_values = L.heads * L.tokens;
  s.total = 3 * s.key_tiles + 3 * s.query_rows + 2 * s.row_values;
  return s;
}

// lse and delta = rowsum(dO∘O) in packed row order; the dQ accumulator starts at zero.
void prepare_rows(const Layout& L, const float* out, const float* dout, const float* lse,
                  BackwardOperands& a) {
  parallel_for(size_t(L.tokens), 16, [&](size_t begin, size_t end) {
    for (long t = long(begin); t < long(end); ++t) {
      for (long h = 0; h < L.heads; ++h) {
        const long offset = t * L.q_stride() + h * L.head_dim, row = row_index(L, h, t);
        double sum = 0;
        for (long d = 0; d < L.head_dim; ++d) sum += double(dout[offset + d]) * out[offset + d];
        a.delta_rows[row] = float(sum);
        a.lse_rows[row] = lse[h * L.tokens + t];
        std::fill_n(a.dq_rows + row * L.padded_dim, L.padded_dim, 0.0f);
      }
    }
  });
}

void write_query_grads(const Layout& L, const BackwardOperands& a, float* dq) {
  parallel_for(size_t(L.tokens), 16, [&](size_t begin, size_t end) {
    for (long t = long(begin); t < long(end); ++t) {
      for (long h = 0; h < L.heads; ++h) {
        const float* src = a.dq_rows + row_index(L, h, t) * L.padded_dim;
        float* dst = dq + t * L.q_stride() + h * L.head_dim;
        for (long d = 0; d < L.head_dim; ++d) dst[d] = L.scale * src[d];
      }
    }
  });
}

// The fused scheme computes dQ alongside dK/dV, but to keep dQ free of write races it can only
// run in parallel over (kv head, document). The split scheme runs over key tiles, then over
// query blocks, at the price of recomputing S and dP for dQ (about 7/5 of the matmul work).
// Fused wins unless its few large items would leave threads idle; the choice never changes the
// result (see accumulate_query_grads).
bool fuse_query_grads(const Layout& L, const std::vector<Span>& docs) {
  const size_t threads = size_t(num_threads());
  if (threads <= 1) return true;
  std::vector<double> costs;
  double total = 0;
  for (Span doc : docs) {
    double cost = 0;
    for (long b = 0; b < count_query_blocks(L, doc); ++b) {
      cost += block_cost(L, doc, query_block(L, doc, b));
    }
    for (long h = 0; h < L.kv_heads; ++h) costs.push_back(cost);
    total += cost * double(L.kv_heads);
  }
  std::sort(costs.begin(), costs.end(), std::greater<double>());
  std::vector<double> load(threads, 0.0);
  for (double cost : costs) *std::min_element(load.begin(), load.end()) += cost;
  const double makespan = *std::max_element(load.begin(), load.end());
  return makespan <= 1.4 * total / double(threads);
}

void run_backward(const Layout& L, const Kernels& K, const std::vector<Span>& docs,
                  const BackwardOperands& a) {
  if (fuse_query_grads(L, docs)) {
    // One item per (kv head, document), its key tiles in order, so dQ sums tiles in order.
    std::vector<WorkItem> items;
    for (long h = 0; h < L.kv_heads; ++h) {
      for (long d = 0; d < long(docs.size()); ++d) {
        items.push_back({h, d, 0, double(docs[size_t(d)].size())});
      }
    }
    run_items(std::move(items), [&](const WorkItem& item) {
      const Span doc = docs[size_t(item.doc)];
      const long tiles = count_key_tiles(doc);
      for (long tile = 0; tile < tiles; tile += kKeyTilesPerPass) {
        const Span pass{tile, std::min(tiles, tile + kKeyTilesPerPass)};
        backward_key_tiles(L, K, a, item.kv_head, item.doc, doc, pass, true);
      }
    });
    return;
  }
  std::vector<WorkItem> key_items;
  for (long h = 0; h < L.kv_heads; ++h) {
    for (long d = 0; d < long(docs.size()); ++d) {
      const Span doc = docs[size_t(d)];
      for (long tile = 0; tile < count_key_tiles(doc); ++tile) {
        key_items.push_back({h, d, tile, double(query_blocks_seeing(L, doc, key_tile(doc, tile)).size())});
      }
    }
  }
  run_items(std::move(key_items), [&](const WorkItem& item) {
    const Span tile{item.index, item.index + 1};
    backward_key_tiles(L, K, a, item.kv_head, item.doc, docs[size_t(item.doc)], tile, false);
  });
  run_items(query_block_items(L, docs), [&](const WorkItem& item) {
    backward_query_block(L, K, a, item.kv_head, item.doc, docs[size_t(item.doc)], item.index);
  });
}

}  // namespace

void attention_backward(const AttentionShape& shape, const float* q, const float* k,
                        const float* v, const int32_t* cu_seqlens, int n_docs, const float* out,
                        const float* lse, const float* dout, float* dq, float* dk, float* dv,
                        CpuPath path, AttentionScratch scratch) {
  check_arguments("attention_backward", shape, cu_seqlens, n_docs);
  const Layout L = make_layout(shape);
  const Kernels K = kernels_for(path);
  const std::vector<Span> docs = documents(cu_seqlens, n_docs);
  const BackwardSizes sizes = backward_sizes(L, count_all_key_tiles(docs));
  Buffer owned;
  float* next = static_cast<float*>(scratch.data);
  if (!next || scratch.bytes < sizes.total * sizeof(float)) {
    owned = new_buffer(sizes.total);
    next = owned.get();
  }
  auto take = [&](long floats) { float* piece = next; next += floats; return piece; };
  BackwardOperands a;
  a.k_columns = pack_key_tiles(L, docs, k, TileLayout::Columns, take(sizes.key_tiles));
  a.v_columns = pack_key_tiles(L, docs, v, TileLayout::Columns, take(sizes.key_tiles));
  a.k_rows = pack_key_tiles(L, docs, k, TileLayout::Rows, take(sizes.key_tiles));
  // Q is packed pre-scaled: S = (scale·Q)·Kᵀ, and dK = dSᵀ·(scale·Q) needs no further factor.
  a.q_rows = take(sizes.query_rows);
  pack_query_rows(L, q, L.scale, a.q_rows);
  a.dout_rows = take(sizes.query_rows);
  pack_query_rows(L, dout, 1.0f, a.dout_rows);
  a.dq_rows = take(sizes.query_rows);
  a.lse_rows = take(sizes.row_values);
  a.delta_rows = take(sizes.row_values);
  prepare_rows(L, out, dout, lse, a);
  a.dk = dk;
  a.dv = dv;
  run_backward(L, K, docs, a);
  write_query_grads(L, a, dq);
}

void attention_backward(const AttentionShape& shape, const float* q, const float* k,
                        const float* v, const int32_t* cu_seqlens, int n_docs, const float* out,
                        const float* lse, const float* dout, float* dq, float* dk, float* dv,
                        AttentionScratch scratch) {
  attention_backward(shape, q, k, v, cu_seqlens, n_docs, out, lse, dout, dq, dk, dv, cpu_path(), scratch);
}

size_t attention_backward_scratch_bytes(const AttentionShape& shape, long documents) {
  const Layout L = make_layout(shape);
  return size_t(backward_sizes(L, shape.tokens / kKeyTile + documents).total) * sizeof(float);
}

}  // namespace zn::cpu
