// The decoder's ops on the CPU (kernels/cpu), on the process's thread pool. Activations are f32
// (bf16 mode rounds only the GEMMs' weight operands); an op given another dtype is an error.
#pragma once
#include "model/backend.h"

namespace zn::model {

class CpuBackend final : public Backend {
 public:
  void linear_forward(long N, long in, long out, ConstTensor x, ConstTensor w, float beta, Tensor y,
                      float alpha) override;
  void linear_backward(long N, long in, long out, ConstTensor x, ConstTensor dy, ConstTensor w, Tensor dx,
                       float dx_beta, float* dw, float alpha) override;
  void rmsnorm_forward(long rows, long dim, float eps, ConstTensor x, const float* w, Tensor y,
                       float* rstd) override;
  void rmsnorm_backward(long rows, long dim, ConstTensor x, const float* w, const float* rstd, ConstTensor dy,
                        Tensor dx, float* dw) override;
  void rope_forward(long tokens, int heads, int head_dim, float theta, const int32_t* positions, Tensor x) override;
  void rope_backward(long tokens, int heads, int head_dim, float theta, const int32_t* positions,
                     Tensor dx) override;
  void attention_forward(const cpu::AttentionShape& shape, ConstTensor q, ConstTensor k, ConstTensor v,
                         const DeviceBatch& batch, Tensor out, float* lse) override;
  void attention_backward(const cpu::AttentionShape& shape, ConstTensor q, ConstTensor k, ConstTensor v,
                          const DeviceBatch& batch, ConstTensor out, const float* lse, ConstTensor dout, Tensor dq,
                          Tensor dk, Tensor dv, Workspace workspace) override;
  void attention_forward(const cpu::AttentionShape& shape, const cpu::AttentionSequences& seqs, ConstTensor q,
                         ConstTensor k, ConstTensor v, Tensor out, float* lse) override;
  void scatter_rows(long count, long row_elements, const int32_t* rows, ConstTensor src, Tensor dst) override;
  void swiglu_forward(long n, ConstTensor gate, ConstTensor up, Tensor out) override;
  void swiglu_backward(long n, ConstTensor gate, ConstTensor up, ConstTensor dout, Tensor dgate,
                       Tensor dup) override;
  void embedding_forward(long tokens, long dim, long vocab, const int32_t* ids, ConstTensor table,
                         Tensor out) override;
  // The two-pass log-prob kernels keep their chunks in scratch of their own; only the one-pass
  // forward_backward takes the planned workspace (its logits panel).
  void logprob_forward(const cpu::LogprobShape& shape, ConstTensor hidden, ConstTensor w, const int32_t* targets,
                       float* logp, float* lse, Workspace workspace) override;
  void logprob_backward(const cpu::LogprobShape& shape, ConstTensor hidden, ConstTensor w, const int32_t* targets,
                        const float* lse, const float* dlogp, float* dhidden, float* dw,
                        Workspace workspace) override;
  void logprob_forward_backward(const cpu::LogprobShape& shape, ConstTensor hidden, ConstTensor w,
                                const int32_t* targets, const float* dlogp, float* logp, float* dhidden, float* dw,
                                Workspace workspace) override;
  void dropout(long rows, long cols, const cpu::DropoutMask& mask, ConstTensor x, Tensor y,
               bool accumulate) override;
  void copy(long n, const float* from, float* to) override;
  void add_into(long n, const float* from, float* to, Tensor rounded) override;
  void round(long n, const float* from, Tensor to) override;
  void poison(void* data, size_t bytes) override;
};

}  // namespace zn::model
