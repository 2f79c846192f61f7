// CpuBackend: each op checks that its activations are f32 and calls the kernel.
#include "model/cpu_backend.h"

#include <cstring>

#include "core/bf16.h"
#include "core/errors.h"
#include "core/thread_pool.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/logprob.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"

namespace zn::model {

namespace {

float* values(Tensor t) {
  ZN_CHECK(t.dtype == DType::F32, "cpu backend: activations are f32, got ", dtype_name(t.dtype));
  return static_cast<float*>(t.data);
}

const float* values(ConstTensor t) {
  ZN_CHECK(t.dtype == DType::F32, "cpu backend: activations are f32, got ", dtype_name(t.dtype));
  return static_cast<const float*>(t.data);
}

constexpr size_t kElementGrain = size_t(1) << 14;

}  // namespace

void CpuBackend::linear_forward(long N, long in, long out, ConstTensor x, ConstTensor w, float beta, Tensor y,
                                float alpha) {
  cpu::gemm(false, true, N, out, in, alpha, {values(x), DType::F32, in}, {w.data, w.dtype, in}, beta, values(y), out);
}

void CpuBackend::linear_backward(long N, long in, long out, ConstTensor x, ConstTensor dy, ConstTensor w, Tensor dx,
                                 float dx_beta, float* dw, float alpha) {
  if (dw)
    cpu::gemm(true, false, out, in, N, alpha, {values(dy), DType::F32, out}, {values(x), DType::F32, in}, 1.0f, dw,
              in);
  if (dx) cpu::gemm(false, false, N, in, out, alpha, {values(dy), DType::F32, out}, {w.data, w.dtype, in}, dx_beta,
                    values(dx), in);
}

void CpuBackend::rmsnorm_forward(long rows, long dim, float eps, ConstTensor x, const float* w, Tensor y,
                                 float* rstd) {
  cpu::rmsnorm_forward(rows, dim, eps, values(x), w, values(y), rstd);
}

void CpuBackend::rmsnorm_backward(long rows, long dim, ConstTensor x, const float* w, const float* rstd,
                                  ConstTensor dy, Tensor dx, float* dw) {
  cpu::rmsnorm_backward(rows, dim, values(x), w, rstd, values(dy), values(dx), dw);
}

void CpuBackend::rope_forward(long tokens, int heads, int head_dim, float theta, const int32_t* positions,
                              Tensor x) {
  cpu::rope_forward(tokens, heads, head_dim, theta, positions, values(x));
}

void CpuBackend::rope_backward(long tokens, int heads, int head_dim, float theta, const int32_t* positions,
                               Tensor dx) {
  cpu::rope_backward(tokens, heads, head_dim, theta, positions, values(dx));
}

void CpuBackend::attention_forward(const cpu::AttentionShape& shape, ConstTensor q, ConstTensor k, ConstTensor v,
                                   const DeviceBatch& batch, Tensor out, float* lse) {
  cpu::attention_forward(shape, values(q), values(k), values(v), batch.cu_seqlens, batch.n_docs, values(out), lse);
}

void CpuBackend::attention_backward(const cpu::AttentionShape& shape, ConstTensor q, ConstTensor k, ConstTensor v,
                                    const DeviceBatch& batch, ConstTensor out, const float* lse, ConstTensor dout,
                                    Tensor dq, Tensor dk, Tensor dv, Workspace workspace) {
  cpu::attention_backward(shape, values(q), values(k), values(v), batch.cu_seqlens, batch.n_docs, values(out), lse,
                          values(dout), values(dq), values(dk), values(dv), {workspace.data, workspace.bytes});
}

void CpuBackend::attention_forward(const cpu::AttentionShape& shape, const cpu::AttentionSequences& seqs,
                                   ConstTensor q, ConstTensor k, ConstTensor v, Tensor out, float* lse) {
  cpu::attention_forward(shape, seqs, values(q), values(k), values(v), values(out), lse);
}

void CpuBackend::scatter_rows(long count, long row_elements, const int32_t* rows, ConstTensor src, Tensor dst) {
  const float* from = values(src);
  float* to = values(dst);
  parallel_for(size_t(count), 1, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      if (rows[i] >= 0) std::memcpy(to + size_t(rows[i]) * row_elements, from + i * row_elements, row_elements * 4);
    }
  });
}

void CpuBackend::swiglu_forward(long n, ConstTensor gate, ConstTensor up, Tensor out) {
  cpu::swiglu_forward(n, values(gate), values(up), values(out));
}

void CpuBackend::swiglu_backward(long n, ConstTensor gate, ConstTensor up, ConstTensor dout, Tensor dgate,
                                 Tensor dup) {
  cpu::swiglu_backward(n, values(gate), values(up), values(dout), values(dgate), values(dup));
}

void CpuBackend::embedding_forward(long tokens, long dim, long vocab, const int32_t* ids, ConstTensor table,
                                   Tensor out) {
  cpu::embedding_forward(tokens, dim, vocab, ids, table.data, table.dtype, values(out));
}

void CpuBackend::logprob_forward(const cpu::LogprobShape& shape, ConstTensor hidden, ConstTensor w,
                                 const int32_t* targets, float* logp, float* lse, Workspace workspace) {
  cpu::logprob_forward(shape, values(hidden), w.data, w.dtype, targets, logp, lse, {workspace.data, workspace.bytes});
}

void CpuBackend::logprob_backward(const cpu::LogprobShape& shape, ConstTensor hidden, ConstTensor w,
                                  const int32_t* targets, const float* lse, const float* dlogp, float* dhidden,
                                  float* dw, Workspace workspace) {
  cpu::logprob_backward(shape, values(hidden), w.data, w.dtype, targets, lse, dlogp, dhidden, dw,
                        {workspace.data, workspace.bytes});
}

void CpuBackend::logprob_forward_backward(const cpu::LogprobShape& shape, ConstTensor hidden, ConstTensor w,
                                          const int32_t* targets, const float* dlogp, float* logp, float* dhidden,
                                          float* dw, Workspace workspace) {
  cpu::logprob_forward_backward(shape, values(hidden), w.data, w.dtype, targets, dlogp, logp, dhidden, dw,
                                {static_cast<float*>(workspace.data), workspace.bytes / sizeof(float)});
}

void CpuBackend::dropout(long rows, long cols, const cpu::DropoutMask& mask, ConstTensor x, Tensor y,
                         bool accumulate) {
  cpu::dropout_forward(rows, cols, mask, values(x), values(y), accumulate);
}

void CpuBackend::copy(long n, const float* from, float* to) {
  parallel_for(size_t(n), kElementGrain, [&](size_t b, size_t e) { std::memcpy(to + b, from + b, (e - b) * 4); });
}

void CpuBackend::add_into(long n, const float* from, float* to, Tensor rounded) {
  ZN_CHECK(!rounded, "cpu backend: the residual gradient has no rounded copy (activations are f32)");
  parallel_for(size_t(n), kElementGrain, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) to[i] += from[i];
  });
}

void CpuBackend::round(long n, const float* from, Tensor to) {
  ZN_CHECK(to.dtype == DType::BF16, "cpu backend: round() makes bf16, asked for ", dtype_name(to.dtype));
  round_to_bf16(size_t(n), from, static_cast<bf16*>(to.data));
}

void CpuBackend::poison(void* data, size_t bytes) { std::memset(data, 0xFF, bytes); }

}  // namespace zn::model
