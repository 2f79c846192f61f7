// Causal grouped-query attention with Mistral's sliding window over packed documents.
//   q [T, Hq, D], k and v [T, Hkv, D], out [T, Hq, D], lse [Hq, T] (per-row log-sum-exp, f32).
// Tokens of all rows of a batch are one stream of T tokens split into documents by cu_seqlens
// (n_docs + 1 offsets, 0 first, T last); attention never crosses a document boundary.
// Query i (index inside its document) sees key j iff j <= i and i - window < j (window <= 0:
// no window, i.e. full causal). Query head h reads kv head h / (Hq / Hkv).
// Flash-style: tiles with online softmax, never a [T, T] matrix; backward recomputes scores.
// Working memory: K and V are repacked once per call into per-tile matmul panels (forward about
// 2x the size of k; backward 3x k plus 3x q for Q, dO and the dQ accumulator), all O(T·H·D).
// Results are deterministic: the same inputs give the same bits for any thread count.
//
// Queries over separate keys (decoding over a KV cache): attention_forward with
// AttentionSequences.
//   q [Tq, Hq, D] with Tq = shape.tokens, k and v [key_rows, Hkv, D], out [Tq, Hq, D],
//   lse [Hq, Tq] or nullptr (not written).
// Sequence s has query rows [cu_seqlens_q[s], cu_seqlens_q[s+1]) and key rows
// [k_begin[s], k_begin[s] + k_len[s]); every row carries its absolute position. The mask is by
// position, not by row: query at position pq sees key at position pk iff pk <= pq and
// pq - window < pk (window <= 0: no window); GQA as above. Key rows may be in any order, so a
// rolling buffer of `window` slots (slot = position % window) that has wrapped works as it is,
// and so do per-sequence cache slots of fixed capacity (k_begin = s * capacity). A packed stream
// is the case k_begin = cu_seqlens_q, k_len = document lengths, positions = index within the
// document, and gives the packed forward's bits. A query row that sees no key gets out = 0 and
// lse = -inf, never NaN. Work is split over (sequence, kv head, query block), so a batch of
// single-token decodes uses every thread; each key tile is packed into per-thread scratch when
// visited (no call-wide copy of the cache). Deterministic for any thread count.
// There is no backward for this form: training uses the packed one.
#pragma once
#include <cstdint>

#include "core/cpu_features.h"

namespace zn::cpu {

struct AttentionShape {
  long tokens;      // T
  int n_heads;      // Hq
  int n_kv_heads;   // Hkv, divides Hq
  int head_dim;     // D
  long window;      // <= 0: none
  float scale;      // usually 1/sqrt(D)
};

void attention_forward(const AttentionShape& shape, const float* q, const float* k, const float* v,
                       const int32_t* cu_seqlens, int n_docs, float* out, float* lse);

// Queries and keys as separate sequences (see the top of this file). Arrays are int32, on the
// host for the CPU kernels and on the device for the CUDA ones.
struct AttentionSequences {
  int n_seqs;
  const int32_t* cu_seqlens_q;  // n_seqs + 1 query row offsets: 0 first, shape.tokens last
  const int32_t* q_positions;   // [shape.tokens] absolute position of each query row, >= 0
  const int32_t* k_begin;       // [n_seqs] first key row of each sequence
  const int32_t* k_len;         // [n_seqs] key rows of each sequence (0: no keys)
  const int32_t* k_positions;   // [key_rows] absolute position of each key row
  long key_rows;                // rows of k and v: [key_rows, Hkv, D]
};

void attention_forward(const AttentionShape& shape, const AttentionSequences& seqs,
                       const float* q, const float* k, const float* v, float* out, float* lse);

// Memory for attention_backward's packed operands (K, V and Q in tiles, dO, the dQ accumulator)
// from the caller, such as a model's step table: attention_backward_scratch_bytes(shape,
// documents) bytes, 64-byte aligned, hold them for up to `documents` documents. Empty, or
// smaller than a call needs: the kernel allocates its own for the call.
struct AttentionScratch {
  void* data = nullptr;
  size_t bytes = 0;
};
size_t attention_backward_scratch_bytes(const AttentionShape& shape, long documents);

// dq, dk, dv are overwritten.
void attention_backward(const AttentionShape& shape, const float* q, const float* k,
                        const float* v, const int32_t* cu_seqlens, int n_docs, const float* out,
                        const float* lse, const float* dout, float* dq, float* dk, float* dv,
                        AttentionScratch scratch = {});

// The same on a given SIMD path instead of cpu_path() (tests and benchmarks compare paths).
void attention_forward(const AttentionShape& shape, const float* q, const float* k, const float* v,
                       const int32_t* cu_seqlens, int n_docs, float* out, float* lse,
                       CpuPath path);
void attention_forward(const AttentionShape& shape, const AttentionSequences& seqs,
                       const float* q, const float* k, const float* v, float* out, float* lse,
                       CpuPath path);
void attention_backward(const AttentionShape& shape, const float* q, const float* k,
                        const float* v, const int32_t* cu_seqlens, int n_docs, const float* out,
                        const float* lse, const float* dout, float* dq, float* dk, float* dv,
                        CpuPath path, AttentionScratch scratch = {});

}  // namespace zn::cpu
