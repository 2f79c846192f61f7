// Attention on the GPU with the contract of kernels/cpu/attention.h: causal grouped-query
// attention with Mistral's sliding window over packed documents. Query i (index within its
// document) sees key j iff j <= i and i - window < j (window <= 0: full causal); query head h
// reads kv head h / (Hq / Hkv).
//   q [T, Hq, D], k and v [T, Hkv, D], out [T, Hq, D]: one dtype, f32 or bf16.
//   lse [Hq, T] f32 (log-sum-exp of the scaled scores, saved by the forward).
//   cu_seqlens: n_docs + 1 int32 offsets on the device, 0 first, T last, non-decreasing.
// dq, dk, dv (the dtype of q) are overwritten.
// Implementations: Flash (FlashAttention-2 style: mma.sync bf16 tiles with f32 online softmax,
// fully masked tiles skipped, backward recomputes the scores; bf16, D = 64 or 128, 16-byte
// aligned arrays) and Simple (one warp per row; any D <= 256, f32 or bf16; for small heads and
// as a cross-check). Auto takes Flash where it applies.
//
// Queries over separate keys (decoding over a KV cache): the contract of the CPU
// attention_forward with AttentionSequences (see kernels/cpu/attention.h): sequence s has query
// rows [cu_seqlens_q[s], cu_seqlens_q[s+1]) and key rows [k_begin[s], k_begin[s] + k_len[s]);
// query at position pq sees key at position pk iff pk <= pq and pq - window < pk (window <= 0:
// none), key rows in any order (a wrapped rolling buffer). q, k, v, out one dtype (f32 or bf16),
// f32 accumulation; lse [Hq, tokens] f32 or nullptr; a row that sees no key gets 0 (lse -inf).
// The int32 arrays are on the device, so only their host-side sizes are checked; key ranges are
// clamped to key_rows. One CTA per (query row, head) whose warps split the keys (memory-bound
// decoding). No backward: training uses the packed form.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/array.h"

namespace zn::cuda {

using AttentionShape = cpu::AttentionShape;
using AttentionSequences = cpu::AttentionSequences;

enum class AttentionImpl { Auto, Flash, Simple };
const char* attention_impl_name(AttentionImpl impl);

// Whether the flash kernels take this shape and these arrays.
bool attention_flash_supported(const AttentionShape& shape, ConstArray q, ConstArray k,
                               ConstArray v);

void attention_forward(const AttentionShape& shape, ConstArray q, ConstArray k, ConstArray v,
                       const int32_t* cu_seqlens, int n_docs, Array out, float* lse,
                       cudaStream_t stream, AttentionImpl impl = AttentionImpl::Auto);

// Queries over separate keys (see the top of this file).
void attention_forward(const AttentionShape& shape, const AttentionSequences& seqs, ConstArray q,
                       ConstArray k, ConstArray v, Array out, float* lse, cudaStream_t stream);

// Device scratch the backward needs (rowsum(dout * out) per query and head).
size_t attention_backward_workspace_bytes(const AttentionShape& shape);

void attention_backward(const AttentionShape& shape, ConstArray q, ConstArray k, ConstArray v,
                        const int32_t* cu_seqlens, int n_docs, ConstArray out, const float* lse,
                        ConstArray dout, Array dq, Array dk, Array dv, void* workspace,
                        cudaStream_t stream, AttentionImpl impl = AttentionImpl::Auto);

}  // namespace zn::cuda
