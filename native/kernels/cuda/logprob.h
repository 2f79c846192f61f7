// Fused log-prob gathering on the GPU, the contract of kernels/cpu/logprob.h:
// logp[n] = log softmax(hidden[n] · Wᵀ)[labels[n]] without the [N, V] logits. Tokens and
// vocabulary are walked in chunks (at most LogprobChunks::tokens x ::vocab logits live in the
// workspace); each chunk is one GEMM (gemm.h) and one pass that merges its max / sum-exp into
// per-token running values (online log-sum-exp). The backward recomputes each chunk's logits,
// forms dlogits = dlogp[n] (1[v == label] - softmax) and runs two GEMMs per chunk:
// dhidden (f32, overwritten) = dlogits · W and dweight (f32, +=) += dlogitsᵀ · hidden (null: not
// computed, a frozen lm_head).
//   hidden [N, d] and weight [V, d]: one dtype (bf16: tensor-core GEMMs, dlogits rounded to bf16;
//   f32: f32 GEMMs). labels [N] int32, -100 = ignored (logp 0, no gradient; its lse is computed
//   here, where the CPU kernel skips an ignored token's logits and writes 0: nothing reads it).
// The forward checks labels on the device first (check_labels = false skips the check and its
// stream synchronisation). Device pointers; asynchronous on `stream`.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/logprob.h"
#include "kernels/cuda/array.h"

namespace zn::cuda {

using LogprobShape = cpu::LogprobShape;
using cpu::kIgnoreIndex;

// Chunk sizes: the defaults keep the workspace near 256 MiB (and never below one full-vocabulary
// row of logits and dlogits, for the one-pass kernel); tests pass small ones so that a small
// problem still crosses chunk boundaries.
struct LogprobChunks {
  long tokens = 4096;
  long vocab = 8192;
};

size_t logprob_workspace_bytes(const LogprobShape& shape, LogprobChunks chunks = {});

void logprob_forward(const LogprobShape& shape, ConstArray hidden, ConstArray weight,
                     const int32_t* labels, float* logp, float* lse, void* workspace,
                     cudaStream_t stream, bool check_labels = true, LogprobChunks chunks = {});

void logprob_backward(const LogprobShape& shape, ConstArray hidden, ConstArray weight,
                      const int32_t* labels, const float* lse, const float* dlogp, float* dhidden,
                      float* dweight, void* workspace, cudaStream_t stream,
                      LogprobChunks chunks = {});

// Forward and backward in one pass, for a dlogp known before the forward (SFT), as the CPU's
// logprob_forward_backward: panels of tokens get their logits over the whole vocabulary once
// (as many rows as the workspace holds, at least one), a row kernel forms lse, logp and dlogits
// from them, and the two backward GEMMs follow: three lm_head GEMMs instead of four. Writes logp
// (0 where ignored) and dhidden (overwritten; 0 for ignored tokens), accumulates dweight; no lse.
void logprob_forward_backward(const LogprobShape& shape, ConstArray hidden, ConstArray weight,
                              const int32_t* labels, const float* dlogp, float* logp, float* dhidden,
                              float* dweight, void* workspace, cudaStream_t stream,
                              bool check_labels = true, LogprobChunks chunks = {});

}  // namespace zn::cuda
