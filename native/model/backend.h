// The ops the Mistral decoder (model/decoder.h) is written against, one implementation per
// device: CpuBackend (model/cpu_backend.h, kernels/cpu) and the CUDA model's backend
// (model/mistral_cuda.cu, kernels/cuda on the model's stream). A Tensor is a pointer into the
// backend's memory with its dtype; the CPU kernels take f32 activations (bf16 only for weights),
// the CUDA kernels f32 or bf16 everywhere. Shapes and math are the kernels' (their headers).
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/dtype.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/logprob.h"

namespace zn::model {

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  explicit operator bool() const { return data != nullptr; }
};

struct ConstTensor {
  const void* data = nullptr;
  DType dtype = DType::F32;
  ConstTensor() = default;
  ConstTensor(const void* d, DType t) : data(d), dtype(t) {}
  ConstTensor(Tensor t) : data(t.data), dtype(t.dtype) {}  // NOLINT: a mutable tensor reads too
};

inline Tensor f32(float* data) { return {data, DType::F32}; }
inline ConstTensor f32(const float* data) { return {data, DType::F32}; }

// Scratch an op may use (the log-prob panels, the attention backward's row sums): a region of
// the backend's memory planned with the activations. Empty: the op allocates its own.
struct Workspace {
  void* data = nullptr;
  size_t bytes = 0;
};

// The batch of one call as the kernels read it (in the backend's memory): tokens laid end to
// end, documents split by cu_seqlens (n_docs + 1 offsets).
struct DeviceBatch {
  long tokens = 0;
  int n_docs = 0;
  const int32_t* input_ids = nullptr;
  const int32_t* position_ids = nullptr;
  const int32_t* targets = nullptr;  // -100: no log-prob, no gradient
  const int32_t* cu_seqlens = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // y[N, out] = alpha x[N, in] · Wᵀ + beta y, W [out, in] as stored by HF.
  virtual void linear_forward(long N, long in, long out, ConstTensor x, ConstTensor w, float beta, Tensor y,
                              float alpha = 1.0f) = 0;
  // The gradients of y = alpha x · Wᵀ: dW[out, in] += alpha dyᵀ · x (f32), then dx[N, in] =
  // alpha dy · W + dx_beta dx: dW is read from x before dx is written, so dx may take x's buffer.
  // A null dW (or rmsnorm's, the log-prob head's dw): the weight is frozen and its gradient is
  // not computed; a null dx: none is wanted.
  virtual void linear_backward(long N, long in, long out, ConstTensor x, ConstTensor dy, ConstTensor w, Tensor dx,
                               float dx_beta, float* dw, float alpha = 1.0f) = 0;
  // y = rmsnorm(x) * w, rstd = 1 / rms(x); the same inputs give the same bits (the decoder
  // recomputes norm outputs this way where it does not keep them).
  virtual void rmsnorm_forward(long rows, long dim, float eps, ConstTensor x, const float* w, Tensor y,
                               float* rstd) = 0;
  virtual void rmsnorm_backward(long rows, long dim, ConstTensor x, const float* w, const float* rstd,
                                ConstTensor dy, Tensor dx, float* dw) = 0;
  virtual void rope_forward(long tokens, int heads, int head_dim, float theta, const int32_t* positions,
                            Tensor x) = 0;
  virtual void rope_backward(long tokens, int heads, int head_dim, float theta, const int32_t* positions,
                             Tensor dx) = 0;
  virtual void attention_forward(const cpu::AttentionShape& shape, ConstTensor q, ConstTensor k, ConstTensor v,
                                 const DeviceBatch& batch, Tensor out, float* lse) = 0;
  virtual void attention_backward(const cpu::AttentionShape& shape, ConstTensor q, ConstTensor k, ConstTensor v,
                                  const DeviceBatch& batch, ConstTensor out, const float* lse, ConstTensor dout,
                                  Tensor dq, Tensor dk, Tensor dv, Workspace workspace) = 0;
  // Queries over keys held elsewhere (a KvCache): sequence s's query rows attend over its key
  // rows, masked by position (kernels/cpu/attention.h, AttentionSequences). lse may be null.
  virtual void attention_forward(const cpu::AttentionShape& shape, const cpu::AttentionSequences& seqs,
                                 ConstTensor q, ConstTensor k, ConstTensor v, Tensor out, float* lse) = 0;
  // dst row rows[i] = src row i, for the rows[i] >= 0 (a KvCache's append); one dtype.
  virtual void scatter_rows(long count, long row_elements, const int32_t* rows, ConstTensor src, Tensor dst) = 0;
  virtual void swiglu_forward(long n, ConstTensor gate, ConstTensor up, Tensor out) = 0;
  virtual void swiglu_backward(long n, ConstTensor gate, ConstTensor up, ConstTensor dout, Tensor dgate,
                               Tensor dup) = 0;
  virtual void embedding_forward(long tokens, long dim, long vocab, const int32_t* ids, ConstTensor table,
                                 Tensor out) = 0;
  // Per-token log-probs of the targets under lm_head (kernels/cpu/logprob.h): never the
  // [tokens, vocab] logits.
  virtual void logprob_forward(const cpu::LogprobShape& shape, ConstTensor hidden, ConstTensor w,
                               const int32_t* targets, float* logp, float* lse, Workspace workspace) = 0;
  virtual void logprob_backward(const cpu::LogprobShape& shape, ConstTensor hidden, ConstTensor w,
                                const int32_t* targets, const float* lse, const float* dlogp, float* dhidden,
                                float* dw, Workspace workspace) = 0;
  // Both at once for a dlogp known before the forward; dhidden may be hidden's buffer.
  virtual void logprob_forward_backward(const cpu::LogprobShape& shape, ConstTensor hidden, ConstTensor w,
                                        const int32_t* targets, const float* dlogp, float* logp, float* dhidden,
                                        float* dw, Workspace workspace) = 0;
  // y = dropout(x), or y += dropout(x) with accumulate, over [rows, cols] (kernels/cpu/dropout.h:
  // the same mask bits on every backend). x and y may differ in dtype.
  virtual void dropout(long rows, long cols, const cpu::DropoutMask& mask, ConstTensor x, Tensor y,
                       bool accumulate) = 0;
  virtual void copy(long n, const float* from, float* to) = 0;
  // to += from, and rounded = to in rounded's dtype when rounded is given (the GEMM operand of
  // the residual gradient in bf16 mode).
  virtual void add_into(long n, const float* from, float* to, Tensor rounded) = 0;
  virtual void round(long n, const float* from, Tensor to) = 0;  // to = from in to's dtype
  // Fills bytes with 0xFF, a NaN in f32 and bf16 (and -1 in int32): a debug build's mark on a
  // buffer whose lifetime ended (buffer_plan.h).
  virtual void poison(void* data, size_t bytes) = 0;
};

}  // namespace zn::model
