// Embedding gather and scatter-add (see embedding.h).
#include "kernels/cuda/embedding.h"

#include "kernels/cuda/check.h"
#include "kernels/cuda/device.cuh"
#include "kernels/cuda/device.h"

namespace zn::cuda {

using device::from_f32;
using device::to_f32;

namespace {

template <typename T, typename O>
__global__ void embedding_forward_kernel(long tokens, long dim, long vocab, const int32_t* ids,
                                         const T* table, O* out) {
  const long total = tokens * dim;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < total; i += long(gridDim.x) * blockDim.x) {
    const long id = ids[i / dim];
    const float value = (id >= 0 && id < vocab) ? to_f32(table[id * dim + i % dim]) : 0.0f;
    out[i] = from_f32<O>(value);
  }
}

template <typename O>
__global__ void embedding_backward_kernel(long tokens, long dim, long vocab, const int32_t* ids,
                                          const O* dout, long pad_id, float* dtable) {
  const long total = tokens * dim;
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < total; i += long(gridDim.x) * blockDim.x) {
    const long id = ids[i / dim];
    if (id < 0 || id >= vocab || id == pad_id) continue;
    atomicAdd(dtable + id * dim + i % dim, to_f32(dout[i]));
  }
}

}  // namespace

void embedding_forward(long tokens, long dim, long vocab, const int32_t* ids, ConstArray table,
                       Array out, cudaStream_t stream, bool check) {
  ZN_CHECK(tokens >= 0 && dim > 0 && vocab > 0, "embedding_forward: bad shape tokens=", tokens,
           " dim=", dim, " vocab=", vocab);
  if (tokens == 0) return;
  if (check) check_ids("embedding_forward", "ids", ids, tokens, vocab, kNoAllowedId, stream);
  dispatch_dtype(table.dtype, [&](auto tt) {
    dispatch_dtype(out.dtype, [&](auto ot) {
      using T = decltype(tt);
      using O = decltype(ot);
      embedding_forward_kernel<T, O><<<grid_size(tokens * dim, 256), 256, 0, stream>>>(
          tokens, dim, vocab, ids, static_cast<const T*>(table.data), static_cast<O*>(out.data));
    });
  });
  ZN_CUDA_CHECK_LAUNCH();
}

void embedding_backward(long tokens, long dim, long vocab, const int32_t* ids, ConstArray dout,
                        long pad_id, float* dtable, cudaStream_t stream) {
  ZN_CHECK(tokens >= 0 && dim > 0 && vocab > 0, "embedding_backward: bad shape tokens=", tokens,
           " dim=", dim, " vocab=", vocab);
  if (tokens == 0) return;
  dispatch_dtype(dout.dtype, [&](auto ot) {
    using O = decltype(ot);
    embedding_backward_kernel<O><<<grid_size(tokens * dim, 256), 256, 0, stream>>>(
        tokens, dim, vocab, ids, static_cast<const O*>(dout.data), pad_id < 0 ? -1 : pad_id, dtable);
  });
  ZN_CUDA_CHECK_LAUNCH();
}

}  // namespace zn::cuda
