// Embedding: out[t] = table[ids[t]];  backward: dtable[ids[t]] += dout[t] (pad row excluded).
#include "kernels/cpu/embedding.h"

#include <algorithm>

#include "core/bf16.h"
#include "core/errors.h"
#include "core/thread_pool.h"

namespace zn::cpu {

namespace {

// Checked once, before any thread starts, so the error names the first bad token.
void check_ids(const char* op, long tokens, long vocab, const int32_t* ids) {
  for (long t = 0; t < tokens; ++t)
    ZN_CHECK(ids[t] >= 0 && ids[t] < vocab, op, ": token ", t, " has id ", ids[t],
             " outside the vocabulary [0, ", vocab, ")");
}

void check_shape(const char* op, long tokens, long dim, long vocab) {
  ZN_CHECK(tokens >= 0 && dim > 0 && vocab > 0, op, ": bad shape tokens=", tokens, " dim=", dim,
           " vocab=", vocab);
}

}  // namespace

void embedding_forward(long tokens, long dim, long vocab, const int32_t* ids, const void* table,
                       DType table_dtype, float* out) {
  check_shape("embedding_forward", tokens, dim, vocab);
  check_ids("embedding_forward", tokens, vocab, ids);
  const size_t grain = size_t(std::max(1L, 16384 / dim));
  parallel_for(size_t(tokens), grain, [&](size_t begin, size_t end) {
    for (size_t t = begin; t < end; ++t) {
      float* row = out + t * dim;
      const size_t offset = size_t(ids[t]) * dim;
      if (table_dtype == DType::F32) {
        const float* src = static_cast<const float*>(table) + offset;
        for (long j = 0; j < dim; ++j) row[j] = src[j];
      } else {
        const bf16* src = static_cast<const bf16*>(table) + offset;
        for (long j = 0; j < dim; ++j) row[j] = bf16_to_f32(src[j]);
      }
    }
  });
}

void embedding_backward(long tokens, long dim, long vocab, const int32_t* ids, const float* dout,
                        long pad_id, float* dtable) {
  check_shape("embedding_backward", tokens, dim, vocab);
  check_ids("embedding_backward", tokens, vocab, ids);
  // Threads split the embedding columns: each owns dtable[:, begin:end], so repeated ids never
  // race, and every row sums its tokens in token order whatever the thread count.
  parallel_for(size_t(dim), 64, [&](size_t begin, size_t end) {
    for (long t = 0; t < tokens; ++t) {
      if (ids[t] == pad_id) continue;
      const float* src = dout + t * dim;
      float* dst = dtable + size_t(ids[t]) * dim;
      for (size_t j = begin; j < end; ++j) dst[j] += src[j];
    }
  });
}

}  // namespace zn::cpu
