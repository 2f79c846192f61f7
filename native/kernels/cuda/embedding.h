// Token embedding on the GPU (kernels/cpu/embedding.h): out[t] = table[ids[t]]; the backward
// scatter-adds dout rows into dtable (f32, +=, atomics: the order of additions is not fixed).
// table [vocab, dim] and out/dout [tokens, dim] are f32 or bf16. With pad_id >= 0 the pad row
// receives no gradient. The forward checks the ids on the device first and throws naming the
// first bad token (check_ids = false skips that check and its stream synchronisation; bad ids
// then give zero rows and no gradient, never an out-of-bounds access).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/array.h"

namespace zn::cuda {

void embedding_forward(long tokens, long dim, long vocab, const int32_t* ids, ConstArray table,
                       Array out, cudaStream_t stream, bool check_ids = true);
void embedding_backward(long tokens, long dim, long vocab, const int32_t* ids, ConstArray dout,
                        long pad_id, float* dtable, cudaStream_t stream);

}  // namespace zn::cuda
