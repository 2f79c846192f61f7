// Inverted dropout with counter-based masks (see dropout.h).
#include "kernels/cpu/dropout.h"

#include <cmath>

#include "core/errors.h"
#include "core/thread_pool.h"

namespace zn::cpu {

DropoutMask dropout_mask(double p, uint64_t key) {
  ZN_CHECK(p >= 0 && p < 1, "dropout: the drop probability must be in [0, 1), got ", p);
  // p * 2^64 rounded down; a p so close to 1 that it rounds to 2^64 keeps the largest draws only.
  const double threshold = std::ldexp(p, 64);
  DropoutMask mask;
  mask.key = key;
  mask.threshold = threshold >= 0x1.0p64 ? UINT64_MAX : uint64_t(threshold);
  mask.scale = float(1.0 / (1.0 - p));
  return mask;
}

void dropout_forward(long rows, long cols, const DropoutMask& mask, const float* x, float* y, bool accumulate) {
  ZN_CHECK(rows >= 0 && cols >= 0, "dropout: negative shape [", rows, ", ", cols, "]");
  const size_t n = size_t(rows) * size_t(cols);
  parallel_for(n, size_t(1) << 14, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      const float kept = dropout_keeps(mask, i) ? x[i] * mask.scale : 0.0f;
      y[i] = accumulate ? y[i] + kept : kept;
    }
  });
}

}  // namespace zn::cpu
