// CudaBackend: each op converts its tensors and queues the kernel on the model's stream; the two
// elementwise kernels the decoder needs beside the op families live here.
#include "model/cuda_backend.h"

#include "kernels/cuda/device.cuh"

#include "core/errors.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/dropout.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/logprob.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/swiglu.h"

namespace zn::model {

namespace {

cuda::Array array(Tensor t) { return {t.data, t.dtype}; }
cuda::ConstArray array(ConstTensor t) { return {t.data, t.dtype}; }
cuda::ConstArray f32_array(const float* data) { return {data, DType::F32}; }

// to += from, and rounded = bf16(to) when rounded is not null (the GEMM operand of dres).
__global__ void add_into_kernel(long n, const float* from, float* to, __nv_bfloat16* rounded) {
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
    const float sum = to[i] + from[i];
    to[i] = sum;
    if (rounded) rounded[i] = __float2bfloat16_rn(sum);
  }
}

// dst[rows[i]] = src[i], one block per row, byte by byte (a decoding step moves a few KiB a layer).
__global__ void scatter_rows_kernel(long row_bytes, const int32_t* rows, const char* src, char* dst) {
  const long i = blockIdx.x;
  if (rows[i] < 0) return;
  const char* from = src + i * row_bytes;
  char* to = dst + long(rows[i]) * row_bytes;
  for (long b = threadIdx.x; b < row_bytes; b += blockDim.x) to[b] = from[b];
}

__global__ void round_to_bf16_kernel(long n, const float* from, __nv_bfloat16* to) {
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x)
    to[i] = __float2bfloat16_rn(from[i]);
}

}  // namespace

void CudaBackend::linear_forward(long N, long in, long out, ConstTensor x, ConstTensor w, float beta, Tensor y,
                                 float alpha) {
  cuda::gemm(false, true, N, out, in, alpha, {x.data, x.dtype, in}, {w.data, w.dtype, in}, beta,
             {y.data, y.dtype, out}, stream_);
}

void CudaBackend::linear_backward(long N, long in, long out, ConstTensor x, ConstTensor dy, ConstTensor w, Tensor dx,
                                  float dx_beta, float* dw, float alpha) {
  if (dw)
    cuda::gemm(true, false, out, in, N, alpha, {dy.data, dy.dtype, out}, {x.data, x.dtype, in}, 1.0f,
               {dw, DType::F32, in}, stream_);
  if (dx) cuda::gemm(false, false, N, in, out, alpha, {dy.data, dy.dtype, out}, {w.data, w.dtype, in}, dx_beta,
                     {dx.data, dx.dtype, in}, stream_);
}

void CudaBackend::rmsnorm_forward(long rows, long dim, float eps, ConstTensor x, const float* w, Tensor y,
                                  float* rstd) {
  cuda::rmsnorm_forward(rows, dim, eps, array(x), f32_array(w), array(y), rstd, stream_);
}

void CudaBackend::rmsnorm_backward(long rows, long dim, ConstTensor x, const float* w, const float* rstd,
                                   ConstTensor dy, Tensor dx, float* dw) {
  cuda::rmsnorm_backward(rows, dim, array(x), f32_array(w), rstd, array(dy), array(dx), dw, stream_);
}

void CudaBackend::rope_forward(long tokens, int heads, int head_dim, float theta, const int32_t* positions,
                               Tensor x) {
  cuda::rope_forward(tokens, heads, head_dim, theta, positions, array(x), stream_);
}

void CudaBackend::rope_backward(long tokens, int heads, int head_dim, float theta, const int32_t* positions,
                                Tensor dx) {
  cuda::rope_backward(tokens, heads, head_dim, theta, positions, array(dx), stream_);
}

void CudaBackend::attention_forward(const cpu::AttentionShape& shape, ConstTensor q, ConstTensor k, ConstTensor v,
                                    const DeviceBatch& batch, Tensor out, float* lse) {
  cuda::attention_forward(shape, array(q), array(k), array(v), batch.cu_seqlens, batch.n_docs, array(out), lse,
                          stream_);
}

void CudaBackend::attention_backward(const cpu::AttentionShape& shape, ConstTensor q, ConstTensor k, ConstTensor v,
                                     const DeviceBatch& batch, ConstTensor out, const float* lse, ConstTensor dout,
                                     Tensor dq, Tensor dk, Tensor dv, Workspace workspace) {
  cuda::attention_backward(shape, array(q), array(k), array(v), batch.cu_seqlens, batch.n_docs, array(out), lse,
                           array(dout), array(dq), array(dk), array(dv), workspace.data, stream_);
}

void CudaBackend::attention_forward(const cpu::AttentionShape& shape, const cpu::AttentionSequences& seqs,
                                    ConstTensor q, ConstTensor k, ConstTensor v, Tensor out, float* lse) {
  cuda::attention_forward(shape, seqs, array(q), array(k), array(v), array(out), lse, stream_);
}

void CudaBackend::scatter_rows(long count, long row_elements, const int32_t* rows, ConstTensor src, Tensor dst) {
  ZN_CHECK(src.dtype == dst.dtype, "cuda backend: scatter_rows copies one dtype, got ", dtype_name(src.dtype),
           " into ", dtype_name(dst.dtype));
  if (count == 0) return;
  scatter_rows_kernel<<<unsigned(count), 256, 0, stream_>>>(long(row_elements * dtype_size(src.dtype)), rows,
                                                           static_cast<const char*>(src.data),
                                                           static_cast<char*>(dst.data));
  ZN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::swiglu_forward(long n, ConstTensor gate, ConstTensor up, Tensor out) {
  cuda::swiglu_forward(n, array(gate), array(up), array(out), stream_);
}

void CudaBackend::swiglu_backward(long n, ConstTensor gate, ConstTensor up, ConstTensor dout, Tensor dgate,
                                  Tensor dup) {
  cuda::swiglu_backward(n, array(gate), array(up), array(dout), array(dgate), array(dup), stream_);
}

void CudaBackend::embedding_forward(long tokens, long dim, long vocab, const int32_t* ids, ConstTensor table,
                                    Tensor out) {
  cuda::embedding_forward(tokens, dim, vocab, ids, array(table), array(out), stream_, /*check_ids=*/false);
}

void CudaBackend::logprob_forward(const cpu::LogprobShape& shape, ConstTensor hidden, ConstTensor w,
                                  const int32_t* targets, float* logp, float* lse, Workspace workspace) {
  cuda::logprob_forward(shape, array(hidden), array(w), targets, logp, lse, workspace.data, stream_,
                        /*check_labels=*/false);
}

void CudaBackend::logprob_backward(const cpu::LogprobShape& shape, ConstTensor hidden, ConstTensor w,
                                   const int32_t* targets, const float* lse, const float* dlogp, float* dhidden,
                                   float* dw, Workspace workspace) {
  cuda::logprob_backward(shape, array(hidden), array(w), targets, lse, dlogp, dhidden, dw, workspace.data, stream_);
}

void CudaBackend::logprob_forward_backward(const cpu::LogprobShape& shape, ConstTensor hidden, ConstTensor w,
                                           const int32_t* targets, const float* dlogp, float* logp, float* dhidden,
                                           float* dw, Workspace workspace) {
  cuda::logprob_forward_backward(shape, array(hidden), array(w), targets, dlogp, logp, dhidden, dw, workspace.data,
                                 stream_, /*check_labels=*/false);
}

void CudaBackend::dropout(long rows, long cols, const cpu::DropoutMask& mask, ConstTensor x, Tensor y,
                          bool accumulate) {
  cuda::dropout_forward(rows, cols, mask, array(x), array(y), accumulate, stream_);
}

void CudaBackend::copy(long n, const float* from, float* to) {
  ZN_CUDA_CHECK(cudaMemcpyAsync(to, from, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::add_into(long n, const float* from, float* to, Tensor rounded) {
  ZN_CHECK(!rounded || rounded.dtype == DType::BF16, "cuda backend: add_into rounds to bf16 only");
  add_into_kernel<<<cuda::grid_size(n, 256), 256, 0, stream_>>>(n, from, to,
                                                               static_cast<__nv_bfloat16*>(rounded.data));
  ZN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::round(long n, const float* from, Tensor to) {
  ZN_CHECK(to.dtype == DType::BF16, "cuda backend: round() makes bf16, asked for ", dtype_name(to.dtype));
  round_to_bf16_kernel<<<cuda::grid_size(n, 256), 256, 0, stream_>>>(n, from, static_cast<__nv_bfloat16*>(to.data));
  ZN_CUDA_CHECK_LAUNCH();
}

void CudaBackend::poison(void* data, size_t bytes) { ZN_CUDA_CHECK(cudaMemsetAsync(data, 0xFF, bytes, stream_)); }

}  // namespace zn::model
