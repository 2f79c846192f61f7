// Fused log-prob gathering: logp[n] = log softmax(hidden[n] · Wᵀ)[labels[n]] without ever
// materialising the [N, V] logits. Walks tokens and vocabulary in chunks, keeps per-token
// running max / sum-exp (online log-sum-exp), and recomputes the chunks in backward.
//   hidden [N, d] f32; weight (lm_head) [V, d] f32 or bf16; labels [N], -100 = ignored
//   (logp 0, lse 0: no logits are computed for it, no gradient). logp, lse: [N]. A label outside [0, V) that
//   is not -100 is an error naming the token.
// With a bf16 weight, the GEMM's rule rounds what meets it to bf16: the hidden states for the
// logits, dlogits for dhidden; dweight = dlogitsᵀ · bf16(hidden) in f32 (the exact gradient of
// the logits actually computed).
// Backward: with g[n] = dlogp[n], dlogits[n, v] = g[n] * (1[v == label] - softmax[n, v]);
//   dhidden = dlogits · W (overwritten), dweight += dlogitsᵀ · hidden (f32, accumulated; null:
//   not computed, a frozen lm_head).
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/cpu_features.h"
#include "core/dtype.h"

namespace zn::cpu {

constexpr int32_t kIgnoreIndex = -100;

struct LogprobShape {
  long tokens;  // N
  long dim;     // d
  long vocab;   // V
};

// Scratch for logprob_forward / logprob_backward from the caller (the model's step table), of
// logprob_scratch_bytes(shape, backward) bytes, 8-byte aligned. Empty, or smaller: the kernel
// allocates its own for the call.
struct LogprobScratch {
  void* data = nullptr;
  size_t bytes = 0;
};

void logprob_forward(const LogprobShape& shape, const float* hidden, const void* weight,
                     DType weight_dtype, const int32_t* labels, float* logp, float* lse,
                     LogprobScratch scratch = {});

void logprob_backward(const LogprobShape& shape, const float* hidden, const void* weight,
                      DType weight_dtype, const int32_t* labels, const float* lse,
                      const float* dlogp, float* dhidden, float* dweight, LogprobScratch scratch = {});

// The same with the per-row exp loops on a given SIMD path instead of cpu_path() (tests compare
// paths; the GEMMs take cpu_path()).
void logprob_forward(const LogprobShape& shape, const float* hidden, const void* weight,
                     DType weight_dtype, const int32_t* labels, float* logp, float* lse, CpuPath path,
                     LogprobScratch scratch = {});
void logprob_backward(const LogprobShape& shape, const float* hidden, const void* weight,
                      DType weight_dtype, const int32_t* labels, const float* lse,
                      const float* dlogp, float* dhidden, float* dweight, CpuPath path,
                      LogprobScratch scratch = {});

// Forward and backward in one pass, for losses whose dlogp does not depend on logp (SFT's mean
// over tokens, known before the forward): each panel of labelled tokens gets its logits over the
// whole vocabulary once ([rows x V] f32: 256 rows, 32 MiB at V = 32000), so the backward does
// not recompute them (the lm_head's three GEMMs instead of four). Writes logp (0 where ignored)
// and dhidden (0 for ignored tokens; it may be `hidden` itself: each panel's rows are copied
// before they are overwritten), accumulates dweight; no lse. Same bf16 rule as above.
// The panel lives in `workspace` when one is given (a caller's dead buffer: the model hands it
// activations it recomputes later) with as many rows as fit, at least 16; otherwise, or when it
// is smaller than that, in scratch of logprob_fused_scratch_bytes.
struct LogprobWorkspace {
  float* data = nullptr;
  size_t floats = 0;
};
void logprob_forward_backward(const LogprobShape& shape, const float* hidden, const void* weight,
                              DType weight_dtype, const int32_t* labels, const float* dlogp,
                              float* logp, float* dhidden, float* dweight,
                              LogprobWorkspace workspace = {});
void logprob_forward_backward(const LogprobShape& shape, const float* hidden, const void* weight,
                              DType weight_dtype, const int32_t* labels, const float* dlogp,
                              float* logp, float* dhidden, float* dweight, LogprobWorkspace workspace,
                              CpuPath path);
// Floats of workspace that hold a panel of `rows` tokens (logits and two [rows, d] panels).
size_t logprob_fused_workspace_floats(const LogprobShape& shape, long rows);

// Bytes of scratch the kernels use per call (chunk buffers; the GEMM's own packing buffers not
// included): a LogprobScratch's size, and memory plans'. [N, V] f32 logits would take 4 N V bytes.
size_t logprob_scratch_bytes(const LogprobShape& shape, bool backward);
size_t logprob_fused_scratch_bytes(const LogprobShape& shape);  // without a workspace

}  // namespace zn::cpu
