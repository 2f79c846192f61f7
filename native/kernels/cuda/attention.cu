// Attention forward and backward (see attention.h).
//   forward:  S = scale · Q Kᵀ (masked), P = softmax(S), O = P V, lse = log Σ exp(S)
//   backward: P = exp(S - lse), dV = Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP - rowsum(dO ∘ O)),
//             dQ = scale · dS K, dK = scale · dSᵀ Q
// Flash kernels (FlashAttention-2): a CTA owns 64 query rows (forward, dQ) or 64 keys (dK/dV, which
// loops over the query heads of its kv head, so GQA needs no atomics); each warp owns 16 rows of
// mma.sync tiles; tiles no query of the block can see are never visited, tiles every query sees
// skip the mask. The backward runs two kernels (dQ by query blocks, dK/dV by key blocks): two more
// score recomputations than FA2's atomic dQ, in exchange for no atomics and deterministic sums.
// Queries over separate keys (a KV cache): a CTA per (query row, head), its warps taking every
// kSplitWarps-th key of the sequence, their softmax states merged in a fixed order.
#include "kernels/cuda/attention.h"

#include <cmath>
#include <climits>

#include "kernels/cuda/check.h"
#include "kernels/cuda/device.cuh"

namespace zn::cuda {

using device::cp_async_16;
using device::from_f32;
using device::ldmatrix_x4;
using device::ldmatrix_x4_trans;
using device::mma_bf16_16816;
using device::pack_bf16x2;
using device::to_f32;
using device::warp_sum;

const char* attention_impl_name(AttentionImpl impl) {
  switch (impl) {
    case AttentionImpl::Auto: return "auto";
    case AttentionImpl::Flash: return "flash";
    case AttentionImpl::Simple: return "simple";
  }
  return "?";
}

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct Params {
  const void* q;
  const void* k;
  const void* v;
  const void* out;
  const void* dout;
  void* out_or_dq;  // forward: out; backward: dq
  void* dk;
  void* dv;
  float* lse;
  float* dsum;  // rowsum(dout * out), [Hq, T]
  const int32_t* cu_seqlens;  // separate keys: cu_seqlens_q
  int n_docs;                 // separate keys: n_seqs
  // Separate keys only (see AttentionSequences): the mask is by position.
  const int32_t* q_positions;
  const int32_t* k_begin;
  const int32_t* k_len;
  const int32_t* k_positions;
  int key_rows;
  int tokens;
  int n_heads, n_kv_heads, head_dim;
  int window;        // <= 0: none
  float scale;       // softmax scale
  float scale_log2;  // scale * log2(e): scores in the exp2 domain
};

// ---- the mask: query i sees keys [first_key(i), i] ----

__device__ __forceinline__ int doc_index(const Params& p, int i) {
  int lo = 0, hi = p.n_docs - 1;  // last document whose start is <= i
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (p.cu_seqlens[mid] <= i) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Clamped to [0, i] so that malformed cu_seqlens can never send a kernel out of bounds.
__device__ __forceinline__ int first_key(const Params& p, int i) {
  int start = p.cu_seqlens[doc_index(p, i)];
  if (p.window > 0 && i - p.window + 1 > start) start = i - p.window + 1;
  return start < 0 ? 0 : (start > i ? i : start);
}

// One past the last query that may see key j.
__device__ __forceinline__ int last_query_end(const Params& p, int j) {
  int end = p.cu_seqlens[doc_index(p, j) + 1];
  if (end > p.tokens || end <= j) end = p.tokens;
  if (p.window > 0 && j + p.window < end) end = j + p.window;
  return end;
}

// ---- rowsum(dout * out), shared by both backward implementations ----

template <typename T>
__global__ void attention_dsum_kernel(Params p) {
  const long warp = (blockIdx.x * long(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= long(p.tokens) * p.n_heads) return;
  const int i = int(warp / p.n_heads), h = int(warp % p.n_heads);
  const long base = (long(i) * p.n_heads + h) * p.head_dim;
  const T* o = static_cast<const T*>(p.out) + base;
  const T* d = static_cast<const T*>(p.dout) + base;
  float sum = 0.0f;
  for (int c = lane; c < p.head_dim; c += 32) sum += to_f32(o[c]) * to_f32(d[c]);
  sum = warp_sum(sum);
  if (lane == 0) p.dsum[long(h) * p.tokens + i] = sum;
}

// ---- simple kernels: one warp per query row (forward, dQ) or key row (dK/dV) ----

constexpr int kSimpleMaxChunks = 8;  // head_dim <= 256: lane holds elements lane + 32 c

template <typename T>
__device__ __forceinline__ void load_row(float (&r)[kSimpleMaxChunks], const T* row, int D, int lane) {
#pragma unroll
  for (int c = 0; c < kSimpleMaxChunks; ++c) r[c] = (lane + 32 * c < D) ? to_f32(row[lane + 32 * c]) : 0.0f;
}

template <typename T>
__device__ __forceinline__ float dot_row(const float (&r)[kSimpleMaxChunks], const T* row, int D, int lane) {
  float s = 0.0f;
#pragma unroll
  for (int c = 0; c < kSimpleMaxChunks; ++c)
    if (lane + 32 * c < D) s += r[c] * to_f32(row[lane + 32 * c]);
  return warp_sum(s);
}

template <typename T>
__device__ __forceinline__ void axpy_row(float (&acc)[kSimpleMaxChunks], float a, const T* row, int D, int lane) {
#pragma unroll
  for (int c = 0; c < kSimpleMaxChunks; ++c)
    if (lane + 32 * c < D) acc[c] += a * to_f32(row[lane + 32 * c]);
}

template <typename T>
__device__ __forceinline__ void store_row(T* row, const float (&r)[kSimpleMaxChunks], float scale, int D, int lane) {
#pragma unroll
  for (int c = 0; c < kSimpleMaxChunks; ++c)
    if (lane + 32 * c < D) row[lane + 32 * c] = from_f32<T>(r[c] * scale);
}

// One warp's online softmax for query row i of head h: attend(p, j) folds key row j in.
template <typename T>
struct RowSoftmax {
  const T* k;
  const T* v;
  long kv_stride;
  float q[kSimpleMaxChunks], acc[kSimpleMaxChunks] = {};
  float m = -INFINITY, l = 0.0f;  // running max and sum of exp(score - m)

  __device__ RowSoftmax(const Params& p, int i, int h, int lane) {
    const int kvh = h / (p.n_heads / p.n_kv_heads);
    k = static_cast<const T*>(p.k) + long(kvh) * p.head_dim;
    v = static_cast<const T*>(p.v) + long(kvh) * p.head_dim;
    kv_stride = long(p.n_kv_heads) * p.head_dim;
    load_row(q, static_cast<const T*>(p.q) + (long(i) * p.n_heads + h) * p.head_dim, p.head_dim, lane);
  }

  __device__ __forceinline__ void attend(const Params& p, int j, int lane) {
    const long row = j * kv_stride;
    const float s = dot_row(q, k + row, p.head_dim, lane) * p.scale;
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new), weight = expf(s - m_new);
    l = l * correction + weight;
#pragma unroll
    for (int c = 0; c < kSimpleMaxChunks; ++c) acc[c] *= correction;
    axpy_row(acc, weight, v + row, p.head_dim, lane);
    m = m_new;
  }
};

template <typename T>
__global__ void simple_forward_kernel(Params p) {
  const long warp = (blockIdx.x * long(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32, D = p.head_dim;
  if (warp >= long(p.tokens) * p.n_heads) return;
  const int i = int(warp / p.n_heads), h = int(warp % p.n_heads);
  RowSoftmax<T> row(p, i, h, lane);
  for (int j = first_key(p, i); j <= i; ++j) row.attend(p, j, lane);
  store_row(static_cast<T*>(p.out_or_dq) + (long(i) * p.n_heads + h) * D, row.acc, 1.0f / row.l, D, lane);
  if (lane == 0) p.lse[long(h) * p.tokens + i] = row.m + logf(row.l);
}

// ---- separate query and key sequences: a CTA per (query row, head) ----

constexpr int kSplitWarps = 8;

// Warp w folds keys w, w + kSplitWarps, ... of the row's sequence that its position sees into
// its own softmax state; warp 0 merges the states in warp order, so the sums do not depend on
// timing. A row that sees no key is written as 0 (lse -inf).
template <typename T>
__global__ void __launch_bounds__(32 * kSplitWarps) sequences_forward_kernel(Params p) {
  __shared__ float merged_acc[kSplitWarps][32 * kSimpleMaxChunks];
  __shared__ float merged_max[kSplitWarps], merged_sum[kSplitWarps];
  const int i = blockIdx.x, h = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int seq = doc_index(p, i);
  // Clamped to the key buffer so that malformed ranges can never send the kernel out of bounds.
  const int begin = min(max(p.k_begin[seq], 0), p.key_rows);
  const int end = int(min(long(begin) + max(p.k_len[seq], 0), long(p.key_rows)));
  const int pq = p.q_positions[i];
  RowSoftmax<T> row(p, i, h, lane);
  for (int j = begin + warp; j < end; j += kSplitWarps) {
    const int pk = p.k_positions[j];
    if (pk <= pq && (p.window <= 0 || pq - p.window < pk)) row.attend(p, j, lane);
  }
#pragma unroll
  for (int c = 0; c < kSimpleMaxChunks; ++c) merged_acc[warp][lane + 32 * c] = row.acc[c];
  if (lane == 0) {
    merged_max[warp] = row.m;
    merged_sum[warp] = row.l;
  }
  __syncthreads();
  if (warp != 0) return;
  float row_max = -INFINITY;
  for (int w = 0; w < kSplitWarps; ++w) row_max = fmaxf(row_max, merged_max[w]);
  float sum = 0.0f, out[kSimpleMaxChunks] = {};
  if (row_max != -INFINITY) {
    for (int w = 0; w < kSplitWarps; ++w) {
      const float factor = expf(merged_max[w] - row_max);  // 0 for a warp that saw no key
      sum += merged_sum[w] * factor;
#pragma unroll
      for (int c = 0; c < kSimpleMaxChunks; ++c) out[c] += merged_acc[w][lane + 32 * c] * factor;
    }
  }
  store_row(static_cast<T*>(p.out_or_dq) + (long(i) * p.n_heads + h) * p.head_dim, out,
            sum > 0.0f ? 1.0f / sum : 0.0f, p.head_dim, lane);
  if (lane == 0 && p.lse) p.lse[long(h) * p.tokens + i] = sum > 0.0f ? row_max + logf(sum) : -INFINITY;
}

template <typename T>
__global__ void simple_dq_kernel(Params p) {
  const long warp = (blockIdx.x * long(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32, D = p.head_dim;
  if (warp >= long(p.tokens) * p.n_heads) return;
  const int i = int(warp / p.n_heads), h = int(warp % p.n_heads);
  const int kvh = h / (p.n_heads / p.n_kv_heads);
  const T* k = static_cast<const T*>(p.k) + long(kvh) * D;
  const T* v = static_cast<const T*>(p.v) + long(kvh) * D;
  const long kv_stride = long(p.n_kv_heads) * D, row = (long(i) * p.n_heads + h) * D;
  float q[kSimpleMaxChunks], d_out[kSimpleMaxChunks], dq[kSimpleMaxChunks] = {};
  load_row(q, static_cast<const T*>(p.q) + row, D, lane);
  load_row(d_out, static_cast<const T*>(p.dout) + row, D, lane);
  const float lse = p.lse[long(h) * p.tokens + i], dsum = p.dsum[long(h) * p.tokens + i];
  for (int j = first_key(p, i); j <= i; ++j) {
    const float prob = expf(dot_row(q, k + j * kv_stride, D, lane) * p.scale - lse);
    const float dscore = prob * (dot_row(d_out, v + j * kv_stride, D, lane) - dsum);
    axpy_row(dq, dscore, k + j * kv_stride, D, lane);
  }
  store_row(static_cast<T*>(p.out_or_dq) + row, dq, p.scale, D, lane);
}

template <typename T>
__global__ void simple_dkv_kernel(Params p) {
  const long warp = (blockIdx.x * long(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32, D = p.head_dim;
  if (warp >= long(p.tokens) * p.n_kv_heads) return;
  const int j = int(warp / p.n_kv_heads), kvh = int(warp % p.n_kv_heads);
  const int group = p.n_heads / p.n_kv_heads;
  const long kv_row = (long(j) * p.n_kv_heads + kvh) * D;
  float k[kSimpleMaxChunks], v[kSimpleMaxChunks], dk[kSimpleMaxChunks] = {}, dv[kSimpleMaxChunks] = {};
  load_row(k, static_cast<const T*>(p.k) + kv_row, D, lane);
  load_row(v, static_cast<const T*>(p.v) + kv_row, D, lane);
  const int end = last_query_end(p, j);
  for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
    for (int i = j; i < end; ++i) {
      if (first_key(p, i) > j) continue;
      const long row = (long(i) * p.n_heads + h) * D;
      const T* q = static_cast<const T*>(p.q) + row;
      const T* d_out = static_cast<const T*>(p.dout) + row;
      const float prob = expf(dot_row(k, q, D, lane) * p.scale - p.lse[long(h) * p.tokens + i]);
      const float dscore = prob * (dot_row(v, d_out, D, lane) - p.dsum[long(h) * p.tokens + i]);
      axpy_row(dv, prob, d_out, D, lane);
      axpy_row(dk, dscore, q, D, lane);
    }
  }
  store_row(static_cast<T*>(p.dk) + kv_row, dk, p.scale, D, lane);
  store_row(static_cast<T*>(p.dv) + kv_row, dv, 1.0f, D, lane);
}

// ---- flash kernels (bf16, D = 64 or 128) ----

using bf16_t = __nv_bfloat16;
constexpr int kBlock = 64;      // query rows (forward, dQ) or keys (dK/dV) per CTA
constexpr int kDkvQuery = 32;   // query rows per step of the dK/dV kernel
constexpr int kFlashThreads = 128;

template <int D>
constexpr int smem_stride() { return D + 8; }  // +16 bytes: ldmatrix rows hit distinct banks

// Copies `Rows` rows of D bf16 (row r = token row0 + r, stride `stride` elements) into shared
// memory, zero-filled past the last token.
template <int D, int Rows>
__device__ __forceinline__ void load_rows(bf16_t* smem, const bf16_t* base, long stride, int row0, int tokens) {
  constexpr int chunks = D / 8;
  for (int c = threadIdx.x; c < Rows * chunks; c += kFlashThreads) {
    const int r = c / chunks, col = (c % chunks) * 8;
    const bool valid = row0 + r < tokens;
    cp_async_16(smem + r * smem_stride<D>() + col, valid ? base + long(row0 + r) * stride + col : base, valid);
  }
}

// S (16 x 8·NT) += A (16 x D, fragments read from rows of `a`) · Bᵀ where B's rows are the
// NT·8 rows of `b` (both in shared memory, stride D + 8).
template <int D, int NT>
__device__ __forceinline__ void scores_from_smem(float (&s)[NT][4], const bf16_t* a, const bf16_t* b, int lane) {
  constexpr int S = smem_stride<D>();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t af[4];
    ldmatrix_x4(af, a + (lane % 16) * S + kk * 16 + (lane / 16) * 8);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t r[4];
      ldmatrix_x4(r, b + (np * 16 + lane % 8 + (lane / 16) * 8) * S + kk * 16 + ((lane / 8) % 2) * 8);
      mma_bf16_16816(s[2 * np], af, r[0], r[1]);
      mma_bf16_16816(s[2 * np + 1], af, r[2], r[3]);
    }
  }
}

// acc (16 x D) += P (16 x 16·KS, accumulator layout, rounded to bf16) · V (16·KS rows of `v`).
template <int D, int KS, int NT>
__device__ __forceinline__ void accumulate_pv(float (&acc)[D / 8][4], const float (&prob)[NT][4], const bf16_t* v, int lane) {
  constexpr int S = smem_stride<D>();
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    const uint32_t a[4] = {pack_bf16x2(prob[2 * kk][0], prob[2 * kk][1]),
                           pack_bf16x2(prob[2 * kk][2], prob[2 * kk][3]),
                           pack_bf16x2(prob[2 * kk + 1][0], prob[2 * kk + 1][1]),
                           pack_bf16x2(prob[2 * kk + 1][2], prob[2 * kk + 1][3])};
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      uint32_t r[4];
      ldmatrix_x4_trans(r, v + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * S + dp * 16 + (lane / 16) * 8);
      mma_bf16_16816(acc[2 * dp], a, r[0], r[1]);
      mma_bf16_16816(acc[2 * dp + 1], a, r[2], r[3]);
    }
  }
}

template <int D>
__global__ void __launch_bounds__(kFlashThreads) flash_forward_kernel(Params p) {
  constexpr int S = smem_stride<D>();
  extern __shared__ __align__(16) unsigned char attention_smem[];
  bf16_t* sQ = reinterpret_cast<bf16_t*>(attention_smem);
  bf16_t* sK = sQ + kBlock * S;
  bf16_t* sV = sK + kBlock * S;

  const int T = p.tokens, h = blockIdx.y, kvh = h / (p.n_heads / p.n_kv_heads);
  const int q0 = blockIdx.x * kBlock, q_last = min(q0 + kBlock, T) - 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const long q_stride = long(p.n_heads) * D, kv_stride = long(p.n_kv_heads) * D;
  const bf16_t* q = static_cast<const bf16_t*>(p.q) + long(h) * D;
  const bf16_t* k = static_cast<const bf16_t*>(p.k) + long(kvh) * D;
  const bf16_t* v = static_cast<const bf16_t*>(p.v) + long(kvh) * D;

  const int block_first_key = first_key(p, q0), block_lo_max = first_key(p, q_last);
  const int nb_first = block_first_key / kBlock, nb_last = q_last / kBlock;
  load_rows<D, kBlock>(sQ, q, q_stride, q0, T);
  load_rows<D, kBlock>(sK, k, kv_stride, nb_first * kBlock, T);
  device::cp_async_commit();

  int row[2], lo[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row[r] = q0 + warp * 16 + g + 8 * r;
    lo[r] = row[r] < T ? first_key(p, row[r]) : row[r];
  }

  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  for (int nb = nb_first; nb <= nb_last; ++nb) {
    const int k0 = nb * kBlock;
    device::cp_async_wait<0>();
    __syncthreads();  // K[nb] (and Q) landed; every warp is done with V of the last block
    load_rows<D, kBlock>(sV, v, kv_stride, k0, T);
    device::cp_async_commit();

    float s[kBlock / 8][4];
#pragma unroll
    for (int j = 0; j < kBlock / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
    scores_from_smem<D, kBlock / 8>(s, sQ + warp * 16 * S, sK, lane);
    __syncthreads();  // every warp is done with K[nb]
    if (nb < nb_last) load_rows<D, kBlock>(sK, k, kv_stride, k0 + kBlock, T);
    device::cp_async_commit();

    const bool full = k0 + kBlock - 1 <= q0 && k0 >= block_lo_max;
#pragma unroll
    for (int j = 0; j < kBlock / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + j * 8 + 2 * t + (e % 2), r = e / 2;
        const bool visible = full || (key <= row[r] && key >= lo[r]);
        s[j][e] = visible ? s[j][e] * p.scale_log2 : -INFINITY;
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float block_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kBlock / 8; ++j) block_max = fmaxf(block_max, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 1));
      block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 2));
      const float m_new = fmaxf(m[r], block_max);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet
      const float correction = exp2f(m[r] - m_use);
      m[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < kBlock / 8; ++j) {
        s[j][2 * r] = exp2f(s[j][2 * r] - m_use);
        s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - m_use);
        sum += s[j][2 * r] + s[j][2 * r + 1];
      }
      l[r] = l[r] * correction + sum;  // per-thread partial; the quad is summed at the end
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        o[j][2 * r] *= correction;
        o[j][2 * r + 1] *= correction;
      }
    }

    device::cp_async_wait<1>();
    __syncthreads();  // V[nb] landed
    accumulate_pv<D, kBlock / 16>(o, s, sV, lane);
  }

  bf16_t* out = static_cast<bf16_t*>(p.out_or_dq) + long(h) * D;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = l[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    if (row[r] >= T) continue;
    const float inv = 1.0f / sum;
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      *reinterpret_cast<uint32_t*>(out + long(row[r]) * q_stride + j * 8 + 2 * t) =
          pack_bf16x2(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
    if (t == 0) p.lse[long(h) * T + row[r]] = (m[r] == -INFINITY ? 0.0f : m[r]) * kLn2 + logf(sum);
  }
}

// dQ for 64 query rows of one head: walks the visible key blocks (K and V double-buffered).
template <int D>
__global__ void __launch_bounds__(kFlashThreads, 2) flash_dq_kernel(Params p) {
  constexpr int S = smem_stride<D>();
  extern __shared__ __align__(16) unsigned char attention_smem[];
  bf16_t* sQ = reinterpret_cast<bf16_t*>(attention_smem);
  bf16_t* sdO = sQ + kBlock * S;
  bf16_t* sKV = sdO + kBlock * S;  // [stage][K, V]

  const int T = p.tokens, h = blockIdx.y, kvh = h / (p.n_heads / p.n_kv_heads);
  const int q0 = blockIdx.x * kBlock, q_last = min(q0 + kBlock, T) - 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const long q_stride = long(p.n_heads) * D, kv_stride = long(p.n_kv_heads) * D;
  const bf16_t* k = static_cast<const bf16_t*>(p.k) + long(kvh) * D;
  const bf16_t* v = static_cast<const bf16_t*>(p.v) + long(kvh) * D;

  const int block_lo_max = first_key(p, q_last);
  const int nb_first = first_key(p, q0) / kBlock, nb_last = q_last / kBlock;
  auto load_kv = [&](int stage, int nb) {
    bf16_t* dst = sKV + stage * 2 * kBlock * S;
    load_rows<D, kBlock>(dst, k, kv_stride, nb * kBlock, T);
    load_rows<D, kBlock>(dst + kBlock * S, v, kv_stride, nb * kBlock, T);
  };
  load_rows<D, kBlock>(sQ, static_cast<const bf16_t*>(p.q) + long(h) * D, q_stride, q0, T);
  load_rows<D, kBlock>(sdO, static_cast<const bf16_t*>(p.dout) + long(h) * D, q_stride, q0, T);
  load_kv(0, nb_first);
  device::cp_async_commit();

  int row[2], lo[2];
  float lse[2], dsum[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row[r] = q0 + warp * 16 + g + 8 * r;
    const bool valid = row[r] < T;
    lo[r] = valid ? first_key(p, row[r]) : INT_MAX;
    lse[r] = valid ? p.lse[long(h) * T + row[r]] * kLog2e : 0.0f;
    dsum[r] = valid ? p.dsum[long(h) * T + row[r]] : 0.0f;
  }

  float dq[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.0f;

  for (int nb = nb_first, stage = 0; nb <= nb_last; ++nb, stage ^= 1) {
    if (nb < nb_last) {
      load_kv(stage ^ 1, nb + 1);
      device::cp_async_commit();
      device::cp_async_wait<1>();
    } else {
      device::cp_async_wait<0>();
    }
    __syncthreads();
    const bf16_t* sK = sKV + stage * 2 * kBlock * S;
    const bf16_t* sV = sK + kBlock * S;
    const int k0 = nb * kBlock;

    float s[kBlock / 8][4], dp[kBlock / 8][4];
#pragma unroll
    for (int j = 0; j < kBlock / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.0f;
    scores_from_smem<D, kBlock / 8>(s, sQ + warp * 16 * S, sK, lane);
    scores_from_smem<D, kBlock / 8>(dp, sdO + warp * 16 * S, sV, lane);

    const bool full = k0 + kBlock - 1 <= q0 && k0 >= block_lo_max;
#pragma unroll
    for (int j = 0; j < kBlock / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + j * 8 + 2 * t + (e % 2), r = e / 2;
        const bool visible = full || (key <= row[r] && key >= lo[r]);
        const float prob = visible ? exp2f(s[j][e] * p.scale_log2 - lse[r]) : 0.0f;
        s[j][e] = prob * (dp[j][e] - dsum[r]);  // dS
      }
    accumulate_pv<D, kBlock / 16>(dq, s, sK, lane);  // dQ += dS K
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  bf16_t* out = static_cast<bf16_t*>(p.out_or_dq) + long(h) * D;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (row[r] >= T) continue;
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      *reinterpret_cast<uint32_t*>(out + long(row[r]) * q_stride + j * 8 + 2 * t) =
          pack_bf16x2(dq[j][2 * r] * p.scale, dq[j][2 * r + 1] * p.scale);
  }
}

// dK and dV for 64 keys of one kv head: walks, for each query head of the group, the query rows
// that can see these keys, 32 at a time (Q, dO, lse, rowsum and mask bounds double-buffered).
template <int D>
__global__ void __launch_bounds__(kFlashThreads, 2) flash_dkv_kernel(Params p) {
  constexpr int S = smem_stride<D>();
  constexpr int kStageElems = 2 * kDkvQuery * S;  // Q and dO rows
  extern __shared__ __align__(16) unsigned char attention_smem[];
  bf16_t* sK = reinterpret_cast<bf16_t*>(attention_smem);
  bf16_t* sV = sK + kBlock * S;
  bf16_t* sQdO = sV + kBlock * S;                                                  // [2][Q, dO]
  float* sStats = reinterpret_cast<float*>(sQdO + 2 * kStageElems);                 // [2][lse, dsum]
  int* sLo = reinterpret_cast<int*>(sStats + 2 * 2 * kDkvQuery);                    // [2][first key]

  const int T = p.tokens, kvh = blockIdx.y, group = p.n_heads / p.n_kv_heads;
  const int k0 = blockIdx.x * kBlock, k_last = min(k0 + kBlock, T) - 1;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const long q_stride = long(p.n_heads) * D, kv_stride = long(p.n_kv_heads) * D;

  const int q_begin = (k0 / kDkvQuery) * kDkvQuery, q_end = last_query_end(p, k_last);
  const int blocks_per_head = q_end > q_begin ? (q_end - q_begin + kDkvQuery - 1) / kDkvQuery : 0;
  const int steps = blocks_per_head * group;

  load_rows<D, kBlock>(sK, static_cast<const bf16_t*>(p.k) + long(kvh) * D, kv_stride, k0, T);
  load_rows<D, kBlock>(sV, static_cast<const bf16_t*>(p.v) + long(kvh) * D, kv_stride, k0, T);
  auto load_step = [&](int stage, int step) {
    const int h = kvh * group + step / blocks_per_head;
    const int qs = q_begin + (step % blocks_per_head) * kDkvQuery;
    bf16_t* dst = sQdO + stage * kStageElems;
    load_rows<D, kDkvQuery>(dst, static_cast<const bf16_t*>(p.q) + long(h) * D, q_stride, qs, T);
    load_rows<D, kDkvQuery>(dst + kDkvQuery * S, static_cast<const bf16_t*>(p.dout) + long(h) * D, q_stride, qs, T);
    if (threadIdx.x < kDkvQuery) {
      const int i = qs + threadIdx.x;
      const bool valid = i < T;
      float* stats = sStats + stage * 2 * kDkvQuery;
      stats[threadIdx.x] = valid ? p.lse[long(h) * T + i] * kLog2e : 0.0f;
      stats[kDkvQuery + threadIdx.x] = valid ? p.dsum[long(h) * T + i] : 0.0f;
      sLo[stage * kDkvQuery + threadIdx.x] = valid ? first_key(p, i) : INT_MAX;
    }
  };
  if (steps > 0) load_step(0, 0);
  device::cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[j][e] = dv[j][e] = 0.0f;
  const int key[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};

  for (int step = 0, stage = 0; step < steps; ++step, stage ^= 1) {
    if (step + 1 < steps) {
      load_step(stage ^ 1, step + 1);
      device::cp_async_commit();
      device::cp_async_wait<1>();
    } else {
      device::cp_async_wait<0>();
    }
    __syncthreads();
    const bf16_t* sQ = sQdO + stage * kStageElems;
    const bf16_t* sdO = sQ + kDkvQuery * S;
    const float* lse = sStats + stage * 2 * kDkvQuery;
    const float* dsum = lse + kDkvQuery;
    const int* lo = sLo + stage * kDkvQuery;
    const int qs = q_begin + (step % blocks_per_head) * kDkvQuery;

    float s[kDkvQuery / 8][4], dp[kDkvQuery / 8][4];  // Sᵀ and dPᵀ: rows keys, columns queries
#pragma unroll
    for (int j = 0; j < kDkvQuery / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.0f;
    scores_from_smem<D, kDkvQuery / 8>(s, sK + warp * 16 * S, sQ, lane);
    scores_from_smem<D, kDkvQuery / 8>(dp, sV + warp * 16 * S, sdO, lane);

    const bool full = k0 + kBlock - 1 <= qs && k0 >= lo[kDkvQuery - 1];
#pragma unroll
    for (int j = 0; j < kDkvQuery / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = j * 8 + 2 * t + (e % 2), query = qs + c, kr = key[e / 2];
        const bool visible = full || (kr <= query && kr >= lo[c]);
        const float prob = visible ? exp2f(s[j][e] * p.scale_log2 - lse[c]) : 0.0f;
        s[j][e] = prob;
        dp[j][e] = prob * (dp[j][e] - dsum[c]);  // dSᵀ
      }
    accumulate_pv<D, kDkvQuery / 16>(dv, s, sdO, lane);  // dV += Pᵀ dO
    accumulate_pv<D, kDkvQuery / 16>(dk, dp, sQ, lane);  // dK += dSᵀ Q
    __syncthreads();
  }
  device::cp_async_wait<0>();

  bf16_t* dk_out = static_cast<bf16_t*>(p.dk) + long(kvh) * D;
  bf16_t* dv_out = static_cast<bf16_t*>(p.dv) + long(kvh) * D;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (key[r] >= T) continue;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      const long offset = long(key[r]) * kv_stride + j * 8 + 2 * t;
      *reinterpret_cast<uint32_t*>(dk_out + offset) = pack_bf16x2(dk[j][2 * r] * p.scale, dk[j][2 * r + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(dv_out + offset) = pack_bf16x2(dv[j][2 * r], dv[j][2 * r + 1]);
    }
  }
}

template <int D>
constexpr size_t forward_smem() { return size_t(3) * kBlock * smem_stride<D>() * sizeof(bf16_t); }
template <int D>
constexpr size_t dq_smem() { return size_t(6) * kBlock * smem_stride<D>() * sizeof(bf16_t); }
template <int D>
constexpr size_t dkv_smem() {
  return (size_t(2) * kBlock + 4 * kDkvQuery) * smem_stride<D>() * sizeof(bf16_t) +
         size_t(2) * kDkvQuery * (2 * sizeof(float) + sizeof(int));
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  ZN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

template <int D>
void flash_forward(const Params& p, cudaStream_t stream) {
  static const bool configured = (allow_smem(flash_forward_kernel<D>, forward_smem<D>()), true);
  (void)configured;
  dim3 grid(unsigned((p.tokens + kBlock - 1) / kBlock), unsigned(p.n_heads));
  flash_forward_kernel<D><<<grid, kFlashThreads, forward_smem<D>(), stream>>>(p);
  ZN_CUDA_CHECK_LAUNCH();
}

template <int D>
void flash_backward(const Params& p, cudaStream_t stream) {
  static const bool configured = (allow_smem(flash_dq_kernel<D>, dq_smem<D>()),
                                  allow_smem(flash_dkv_kernel<D>, dkv_smem<D>()), true);
  (void)configured;
  const unsigned blocks = unsigned((p.tokens + kBlock - 1) / kBlock);
  flash_dq_kernel<D><<<dim3(blocks, unsigned(p.n_heads)), kFlashThreads, dq_smem<D>(), stream>>>(p);
  ZN_CUDA_CHECK_LAUNCH();
  flash_dkv_kernel<D><<<dim3(blocks, unsigned(p.n_kv_heads)), kFlashThreads, dkv_smem<D>(), stream>>>(p);
  ZN_CUDA_CHECK_LAUNCH();
}

void check_shape(const char* op, const AttentionShape& shape, ConstArray q, ConstArray k, ConstArray v) {
  ZN_CHECK(shape.tokens >= 0 && shape.tokens < INT_MAX, op, ": tokens must be in [0, 2^31), got ", shape.tokens);
  ZN_CHECK(shape.n_heads > 0 && shape.n_kv_heads > 0 && shape.n_heads % shape.n_kv_heads == 0, op,
           ": n_kv_heads (", shape.n_kv_heads, ") must divide n_heads (", shape.n_heads, ")");
  ZN_CHECK(shape.head_dim > 0 && shape.head_dim <= 32 * kSimpleMaxChunks, op,
           ": head_dim must be in [1, ", 32 * kSimpleMaxChunks, "], got ", shape.head_dim);
  ZN_CHECK(q.dtype == k.dtype && q.dtype == v.dtype, op, ": q, k and v must share one dtype");
}

Params make_params(const char* op, const AttentionShape& shape, ConstArray q, ConstArray k,
                   ConstArray v, const int32_t* cu_seqlens, int n_docs) {
  check_shape(op, shape, q, k, v);
  ZN_CHECK(n_docs >= 1, op, ": n_docs must be at least 1, got ", n_docs);
  Params p{};
  p.q = q.data;
  p.k = k.data;
  p.v = v.data;
  p.cu_seqlens = cu_seqlens;
  p.n_docs = n_docs;
  p.tokens = int(shape.tokens);
  p.n_heads = shape.n_heads;
  p.n_kv_heads = shape.n_kv_heads;
  p.head_dim = shape.head_dim;
  p.window = shape.window <= 0 || shape.window >= shape.tokens ? 0 : int(shape.window);
  p.scale = shape.scale;
  p.scale_log2 = shape.scale * kLog2e;
  return p;
}

bool use_flash(const char* op, AttentionImpl impl, const AttentionShape& shape, ConstArray q,
               ConstArray k, ConstArray v) {
  const bool supported = attention_flash_supported(shape, q, k, v);
  if (impl == AttentionImpl::Flash)
    ZN_CHECK(supported, op, ": the flash kernels need bf16 q/k/v, head_dim 64 or 128 and 16-byte "
             "aligned arrays (got ", dtype_name(q.dtype), ", head_dim ", shape.head_dim, ")");
  return impl != AttentionImpl::Simple && supported;
}

unsigned warp_blocks(long warps) { return unsigned((warps * 32 + 127) / 128); }

}  // namespace

bool attention_flash_supported(const AttentionShape& shape, ConstArray q, ConstArray k, ConstArray v) {
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  return q.dtype == DType::BF16 && k.dtype == DType::BF16 && v.dtype == DType::BF16 &&
         (shape.head_dim == 64 || shape.head_dim == 128) && aligned(q.data) && aligned(k.data) &&
         aligned(v.data);
}

void attention_forward(const AttentionShape& shape, ConstArray q, ConstArray k, ConstArray v,
                       const int32_t* cu_seqlens, int n_docs, Array out, float* lse,
                       cudaStream_t stream, AttentionImpl impl) {
  Params p = make_params("attention_forward", shape, q, k, v, cu_seqlens, n_docs);
  ZN_CHECK(out.dtype == q.dtype, "attention_forward: out must have q's dtype");
  if (shape.tokens == 0) return;
  p.out_or_dq = out.data;
  p.lse = lse;
  if (use_flash("attention_forward", impl, shape, q, k, v) && reinterpret_cast<uintptr_t>(out.data) % 16 == 0) {
    if (shape.head_dim == 64) flash_forward<64>(p, stream);
    else flash_forward<128>(p, stream);
    return;
  }
  dispatch_dtype(q.dtype, [&](auto tag) {
    using T = decltype(tag);
    simple_forward_kernel<T><<<warp_blocks(shape.tokens * shape.n_heads), 128, 0, stream>>>(p);
  });
  ZN_CUDA_CHECK_LAUNCH();
}

void attention_forward(const AttentionShape& shape, const AttentionSequences& seqs, ConstArray q,
                       ConstArray k, ConstArray v, Array out, float* lse, cudaStream_t stream) {
  const char* op = "attention_forward";
  check_shape(op, shape, q, k, v);
  ZN_CHECK(out.dtype == q.dtype, op, ": out must have q's dtype");
  ZN_CHECK(seqs.n_seqs >= 0, op, ": n_seqs must be >= 0, got ", seqs.n_seqs);
  ZN_CHECK(seqs.key_rows >= 0 && seqs.key_rows < INT_MAX, op, ": key_rows must be in [0, 2^31), got ",
           seqs.key_rows);
  if (shape.tokens == 0) return;
  ZN_CHECK(seqs.n_seqs >= 1, op, ": n_seqs must be at least 1 when there are query rows");
  ZN_CHECK(seqs.cu_seqlens_q && seqs.q_positions && seqs.k_begin && seqs.k_len, op,
           ": cu_seqlens_q, q_positions, k_begin and k_len must not be null");
  ZN_CHECK(seqs.key_rows == 0 || seqs.k_positions, op, ": k_positions must not be null");
  Params p = make_params(op, shape, q, k, v, seqs.cu_seqlens_q, seqs.n_seqs);
  p.window = shape.window <= 0 || shape.window >= INT_MAX ? 0 : int(shape.window);
  p.q_positions = seqs.q_positions;
  p.k_begin = seqs.k_begin;
  p.k_len = seqs.k_len;
  p.k_positions = seqs.k_positions;
  p.key_rows = int(seqs.key_rows);
  p.out_or_dq = out.data;
  p.lse = lse;
  dispatch_dtype(q.dtype, [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(unsigned(shape.tokens), unsigned(shape.n_heads));
    sequences_forward_kernel<T><<<grid, 32 * kSplitWarps, 0, stream>>>(p);
  });
  ZN_CUDA_CHECK_LAUNCH();
}

size_t attention_backward_workspace_bytes(const AttentionShape& shape) {
  return size_t(shape.tokens) * size_t(shape.n_heads) * sizeof(float);
}

void attention_backward(const AttentionShape& shape, ConstArray q, ConstArray k, ConstArray v,
                        const int32_t* cu_seqlens, int n_docs, ConstArray out, const float* lse,
                        ConstArray dout, Array dq, Array dk, Array dv, void* workspace,
                        cudaStream_t stream, AttentionImpl impl) {
  Params p = make_params("attention_backward", shape, q, k, v, cu_seqlens, n_docs);
  ZN_CHECK(out.dtype == q.dtype && dout.dtype == q.dtype && dq.dtype == q.dtype &&
               dk.dtype == q.dtype && dv.dtype == q.dtype,
           "attention_backward: out, dout, dq, dk and dv must have q's dtype");
  if (shape.tokens == 0) return;
  p.out = out.data;
  p.dout = dout.data;
  p.out_or_dq = dq.data;
  p.dk = dk.data;
  p.dv = dv.data;
  p.lse = const_cast<float*>(lse);
  p.dsum = static_cast<float*>(workspace);
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  const bool flash = use_flash("attention_backward", impl, shape, q, k, v) && aligned(dout.data) &&
                     aligned(dq.data) && aligned(dk.data) && aligned(dv.data);
  dispatch_dtype(q.dtype, [&](auto tag) {
    using T = decltype(tag);
    attention_dsum_kernel<T><<<warp_blocks(shape.tokens * shape.n_heads), 128, 0, stream>>>(p);
    ZN_CUDA_CHECK_LAUNCH();
    if (flash) return;
    simple_dq_kernel<T><<<warp_blocks(shape.tokens * shape.n_heads), 128, 0, stream>>>(p);
    ZN_CUDA_CHECK_LAUNCH();
    simple_dkv_kernel<T><<<warp_blocks(shape.tokens * shape.n_kv_heads), 128, 0, stream>>>(p);
    ZN_CUDA_CHECK_LAUNCH();
  });
  if (!flash) return;
  if (shape.head_dim == 64) flash_backward<64>(p, stream);
  else flash_backward<128>(p, stream);
}

}  // namespace zn::cuda
