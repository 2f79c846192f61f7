// Chunked log-prob gathering (see logprob.h).
//   forward, per chunk:  z = hidden · W_chunkᵀ;  m' = max(m, max z);  s' = s e^(m - m') + Σ e^(z - m')
//   finally:             lse = m + log s;  logp = z[label] - lse
//   backward, per chunk: dz = g (1[v == label] - e^(z - lse));  dhidden += dz · W_chunk;
//                        dW_chunk += dzᵀ · hidden
//   forward_backward, per panel of rows over the whole vocabulary: z = hidden · Wᵀ; lse, logp and
//                        dz per row; dhidden = dz · W;  dW += dzᵀ · hidden
#include "kernels/cuda/logprob.h"

#include "kernels/cuda/check.h"
#include "kernels/cuda/device.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"

namespace zn::cuda {

using device::from_f32;

namespace {

constexpr int kThreads = 256;

long token_chunk(const LogprobShape& s, LogprobChunks c) { return s.tokens < c.tokens ? s.tokens : c.tokens; }
long vocab_chunk(const LogprobShape& s, LogprobChunks c) { return s.vocab < c.vocab ? s.vocab : c.vocab; }

// Workspace: f32 logits [Nc, Vc], dlogits [Nc, Vc] (f32 room, also holds bf16), running max,
// running sum and the label's logit [Nc] each.
struct Workspace {
  float* logits;
  void* dlogits;
  float* run_max;
  float* run_sum;
  float* label_logit;
};

// Each region starts on a 256-byte boundary (vector loads, cuBLASLt's preferred alignment).
long padded(long floats) { return (floats + 63) / 64 * 64; }

// The one-pass kernel's panel: rows of f32 logits over the whole vocabulary in the logits region
// and their dlogits (f32 room) in the dlogits region, each region padded(max(nc vc, V)) floats.
long grid_floats(const LogprobShape& shape, LogprobChunks chunks) {
  const long nc = token_chunk(shape, chunks), vc = vocab_chunk(shape, chunks);
  return padded(nc * vc > shape.vocab ? nc * vc : shape.vocab);
}

long panel_rows(const LogprobShape& shape, LogprobChunks chunks) {
  const long fit = grid_floats(shape, chunks) / shape.vocab;
  return shape.tokens < fit ? shape.tokens : fit;
}

Workspace carve(const LogprobShape& shape, LogprobChunks chunks, void* base) {
  const long nc = token_chunk(shape, chunks);
  float* f = static_cast<float*>(base);
  const long grid = grid_floats(shape, chunks), column = padded(nc);
  return {f, f + grid, f + 2 * grid, f + 2 * grid + column, f + 2 * grid + 2 * column};
}

// One block per token row of the chunk: merges the chunk's max / sum-exp into the running ones.
__global__ void __launch_bounds__(kThreads) merge_chunk_kernel(
    long rows, long vc, long v0, const float* logits, const int32_t* labels, bool first,
    float* run_max, float* run_sum, float* label_logit) {
  __shared__ float scratch[32];
  for (long n = blockIdx.x; n < rows; n += gridDim.x) {
    const float* z = logits + n * vc;
    float local_max = -INFINITY;
    for (long v = threadIdx.x; v < vc; v += blockDim.x) local_max = fmaxf(local_max, z[v]);
    const float chunk_max = device::block_max(local_max, scratch);
    const float previous_max = first ? -INFINITY : run_max[n];
    const float new_max = fmaxf(previous_max, chunk_max);
    float sum = 0.0f;
    for (long v = threadIdx.x; v < vc; v += blockDim.x) sum += expf(z[v] - new_max);
    sum = device::block_sum(sum, scratch);
    if (threadIdx.x == 0) {
      const float previous_sum = first ? 0.0f : run_sum[n] * expf(previous_max - new_max);
      run_max[n] = new_max;
      run_sum[n] = previous_sum + sum;
      if (first) label_logit[n] = 0.0f;
      const long label = labels[n];
      if (label >= v0 && label < v0 + vc) label_logit[n] = z[label - v0];
    }
  }
}

__global__ void finish_kernel(long rows, const int32_t* labels, const float* run_max,
                              const float* run_sum, const float* label_logit, float* logp, float* lse) {
  for (long n = blockIdx.x * long(blockDim.x) + threadIdx.x; n < rows; n += long(gridDim.x) * blockDim.x) {
    const float total = run_max[n] + logf(run_sum[n]);
    lse[n] = total;
    logp[n] = labels[n] == kIgnoreIndex ? 0.0f : label_logit[n] - total;
  }
}

template <typename T>
__global__ void dlogits_kernel(long rows, long vc, long v0, const float* logits,
                               const int32_t* labels, const float* lse, const float* dlogp, T* dz) {
  const long total = rows * vc;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < total; i += long(gridDim.x) * blockDim.x) {
    const long n = i / vc, v = v0 + i % vc;
    const int32_t label = labels[n];
    const float g = label == kIgnoreIndex ? 0.0f : dlogp[n];
    dz[i] = from_f32<T>(g * ((v == label ? 1.0f : 0.0f) - expf(logits[i] - lse[n])));
  }
}

// One block per row of a full-vocabulary panel: lse, logp (0 where ignored) and the row's
// dlogits g (1[v == label] - e^(z - lse)), g = 0 for an ignored token.
template <typename T>
__global__ void __launch_bounds__(kThreads) fused_rows_kernel(long rows, long vocab, const float* logits,
                                                              const int32_t* labels, const float* dlogp,
                                                              float* logp, T* dz) {
  __shared__ float scratch[32];
  for (long n = blockIdx.x; n < rows; n += gridDim.x) {
    const float* z = logits + n * vocab;
    float local_max = -INFINITY;
    for (long v = threadIdx.x; v < vocab; v += blockDim.x) local_max = fmaxf(local_max, z[v]);
    const float row_max = device::block_max(local_max, scratch);
    float local_sum = 0.0f;
    for (long v = threadIdx.x; v < vocab; v += blockDim.x) local_sum += expf(z[v] - row_max);
    const float lse = row_max + logf(device::block_sum(local_sum, scratch));
    const int32_t label = labels[n];
    const bool ignored = label == kIgnoreIndex;
    if (threadIdx.x == 0) logp[n] = ignored ? 0.0f : z[label] - lse;
    const float g = ignored ? 0.0f : dlogp[n];
    T* out = dz + n * vocab;
    for (long v = threadIdx.x; v < vocab; v += blockDim.x) {
      out[v] = from_f32<T>(g * ((v == label ? 1.0f : 0.0f) - expf(z[v] - lse)));
    }
  }
}

void check_args(const char* op, const LogprobShape& shape, ConstArray hidden, ConstArray weight,
                LogprobChunks chunks) {
  ZN_CHECK(chunks.tokens > 0 && chunks.vocab > 0, op, ": chunk sizes must be positive");
  ZN_CHECK(shape.tokens >= 0 && shape.dim > 0 && shape.vocab > 0, op, ": bad shape tokens=",
           shape.tokens, " dim=", shape.dim, " vocab=", shape.vocab);
  ZN_CHECK(hidden.dtype == weight.dtype, op, ": hidden and weight must share one dtype, got ",
           dtype_name(hidden.dtype), " and ", dtype_name(weight.dtype));
}

const char* element(const void* base, DType t, long index) {
  return static_cast<const char*>(base) + index * long(dtype_size(t));
}

// logits[0:rows, 0:vc] = hidden[n0:n0+rows] · W[v0:v0+vc]ᵀ (f32).
void chunk_logits(const LogprobShape& shape, ConstArray hidden, ConstArray weight, long n0,
                  long rows, long v0, long vc, float* logits, cudaStream_t stream) {
  gemm(false, true, rows, vc, shape.dim, 1.0f,
       Matrix{element(hidden.data, hidden.dtype, n0 * shape.dim), hidden.dtype, shape.dim},
       Matrix{element(weight.data, weight.dtype, v0 * shape.dim), weight.dtype, shape.dim}, 0.0f,
       OutMatrix{logits, DType::F32, vc}, stream);
}

}  // namespace

size_t logprob_workspace_bytes(const LogprobShape& shape, LogprobChunks chunks) {
  const long nc = token_chunk(shape, chunks);
  return size_t(2 * grid_floats(shape, chunks) + 3 * padded(nc)) * sizeof(float);
}

void logprob_forward(const LogprobShape& shape, ConstArray hidden, ConstArray weight,
                     const int32_t* labels, float* logp, float* lse, void* workspace,
                     cudaStream_t stream, bool check_labels, LogprobChunks chunks) {
  check_args("logprob_forward", shape, hidden, weight, chunks);
  if (shape.tokens == 0) return;
  if (check_labels)
    check_ids("logprob_forward", "labels", labels, shape.tokens, shape.vocab, kIgnoreIndex, stream);
  const Workspace ws = carve(shape, chunks, workspace);
  const long nc = token_chunk(shape, chunks), vc_max = vocab_chunk(shape, chunks);
  for (long n0 = 0; n0 < shape.tokens; n0 += nc) {
    const long rows = shape.tokens - n0 < nc ? shape.tokens - n0 : nc;
    for (long v0 = 0; v0 < shape.vocab; v0 += vc_max) {
      const long vc = shape.vocab - v0 < vc_max ? shape.vocab - v0 : vc_max;
      chunk_logits(shape, hidden, weight, n0, rows, v0, vc, ws.logits, stream);
      merge_chunk_kernel<<<unsigned(rows < 65535 ? rows : 65535), kThreads, 0, stream>>>(
          rows, vc, v0, ws.logits, labels + n0, v0 == 0, ws.run_max, ws.run_sum, ws.label_logit);
      ZN_CUDA_CHECK_LAUNCH();
    }
    finish_kernel<<<grid_size(rows, 256), 256, 0, stream>>>(rows, labels + n0, ws.run_max, ws.run_sum,
                                                           ws.label_logit, logp + n0, lse + n0);
    ZN_CUDA_CHECK_LAUNCH();
  }
}

void logprob_backward(const LogprobShape& shape, ConstArray hidden, ConstArray weight,
                      const int32_t* labels, const float* lse, const float* dlogp, float* dhidden,
                      float* dweight, void* workspace, cudaStream_t stream, LogprobChunks chunks) {
  check_args("logprob_backward", shape, hidden, weight, chunks);
  if (shape.tokens == 0) return;
  const Workspace ws = carve(shape, chunks, workspace);
  const long nc = token_chunk(shape, chunks), vc_max = vocab_chunk(shape, chunks), d = shape.dim;
  const DType t = hidden.dtype;
  for (long n0 = 0; n0 < shape.tokens; n0 += nc) {
    const long rows = shape.tokens - n0 < nc ? shape.tokens - n0 : nc;
    for (long v0 = 0; v0 < shape.vocab; v0 += vc_max) {
      const long vc = shape.vocab - v0 < vc_max ? shape.vocab - v0 : vc_max;
      chunk_logits(shape, hidden, weight, n0, rows, v0, vc, ws.logits, stream);
      dispatch_dtype(t, [&](auto tag) {
        using T = decltype(tag);
        dlogits_kernel<T><<<grid_size(rows * vc, 256), 256, 0, stream>>>(
            rows, vc, v0, ws.logits, labels + n0, lse + n0, dlogp + n0, static_cast<T*>(ws.dlogits));
      });
      ZN_CUDA_CHECK_LAUNCH();
      // dhidden[n0:] (=, then +=) dz · W_chunk;  dW_chunk += dzᵀ · hidden[n0:]
      gemm(false, false, rows, d, vc, 1.0f, Matrix{ws.dlogits, t, vc},
           Matrix{element(weight.data, t, v0 * d), t, d}, v0 == 0 ? 0.0f : 1.0f,
           OutMatrix{dhidden + n0 * d, DType::F32, d}, stream);
      if (dweight)
        gemm(true, false, vc, d, rows, 1.0f, Matrix{ws.dlogits, t, vc},
             Matrix{element(hidden.data, t, n0 * d), t, d}, 1.0f,
             OutMatrix{dweight + v0 * d, DType::F32, d}, stream);
    }
  }
}

void logprob_forward_backward(const LogprobShape& shape, ConstArray hidden, ConstArray weight,
                              const int32_t* labels, const float* dlogp, float* logp, float* dhidden,
                              float* dweight, void* workspace, cudaStream_t stream, bool check_labels,
                              LogprobChunks chunks) {
  check_args("logprob_forward_backward", shape, hidden, weight, chunks);
  if (shape.tokens == 0) return;
  if (check_labels)
    check_ids("logprob_forward_backward", "labels", labels, shape.tokens, shape.vocab, kIgnoreIndex, stream);
  const Workspace ws = carve(shape, chunks, workspace);
  const long V = shape.vocab, d = shape.dim, rows_max = panel_rows(shape, chunks);
  const DType t = hidden.dtype;
  for (long n0 = 0; n0 < shape.tokens; n0 += rows_max) {
    const long rows = shape.tokens - n0 < rows_max ? shape.tokens - n0 : rows_max;
    chunk_logits(shape, hidden, weight, n0, rows, 0, V, ws.logits, stream);
    dispatch_dtype(t, [&](auto tag) {
      using T = decltype(tag);
      fused_rows_kernel<T><<<unsigned(rows < 65535 ? rows : 65535), kThreads, 0, stream>>>(
          rows, V, ws.logits, labels + n0, dlogp + n0, logp + n0, static_cast<T*>(ws.dlogits));
    });
    ZN_CUDA_CHECK_LAUNCH();
    // dhidden[n0:] = dz · W;  dW += dzᵀ · hidden[n0:]
    gemm(false, false, rows, d, V, 1.0f, Matrix{ws.dlogits, t, V}, Matrix{weight.data, t, d}, 0.0f,
         OutMatrix{dhidden + n0 * d, DType::F32, d}, stream);
    if (dweight)
      gemm(true, false, V, d, rows, 1.0f, Matrix{ws.dlogits, t, V}, Matrix{element(hidden.data, t, n0 * d), t, d},
           1.0f, OutMatrix{dweight, DType::F32, d}, stream);
  }
}

}  // namespace zn::cuda
