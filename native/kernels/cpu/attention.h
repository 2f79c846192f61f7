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

// dq, dk, dv are overwritten.
void attention_backward(const AttentionShape& shape, const float* q, const float* k,
                        const float* v, const int32_t* cu_seqlens, int n_docs, const float* out,
                        const float* lse, const float* dout, float* dq, float* dk, float* dv);

// The same on a given SIMD path instead of cpu_path() (tests and benchmarks compare paths).
void attention_forward(const AttentionShape& shape, const float* q, const float* k, const float* v,
                       const int32_t* cu_seqlens, int n_docs, float* out, float* lse,
                       CpuPath path);
void attention_backward(const AttentionShape& shape, const float* q, const float* k,
                        const float* v, const int32_t* cu_seqlens, int n_docs, const float* out,
                        const float* lse, const float* dout, float* dq, float* dk, float* dv,
                        CpuPath path);

}  // namespace zn::cpu
