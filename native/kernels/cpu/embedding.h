// Token embedding: out[t] = table[ids[t]]; backward scatter-adds dout rows into dtable
// (accumulates: dtable += ..., so tied or accumulated gradients add up; zero it for a fresh one).
// table is [vocab, dim] (f32 or bf16); out, dout: [tokens, dim] f32; dtable: [vocab, dim] f32.
// An id outside [0, vocab) is an error naming the token index. With pad_id >= 0 the pad row
// receives no gradient (nn.Embedding(padding_idx=pad_token_id), as transformers does).
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace zn::cpu {

void embedding_forward(long tokens, long dim, long vocab, const int32_t* ids, const void* table,
                       DType table_dtype, float* out);
void embedding_backward(long tokens, long dim, long vocab, const int32_t* ids, const float* dout,
                        long pad_id, float* dtable);

}  // namespace zn::cpu
