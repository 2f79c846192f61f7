#include "core/bf16.h"

#include "core/thread_pool.h"

namespace zn {

void round_to_bf16(size_t n, const float* from, bf16* to) {
  parallel_for(n, size_t(1) << 14, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) to[i] = f32_to_bf16(from[i]);
  });
}

}  // namespace zn
