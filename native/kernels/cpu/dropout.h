// Inverted dropout with counter-based masks (as torch's nn.Dropout in training: a kept element is
// scaled by 1 / (1 - p), a dropped one is 0). Element i of a mask is kept when draw i of the mask's
// stream (core/counter_random.h) is at least p * 2^64, so a mask is a pure function of its key:
// the backward and a resumed run regenerate it instead of storing it, and the CUDA kernel
// (kernels/cuda/dropout.h) keeps exactly the elements this one keeps.
//   y[r, c] = (accumulate ? y[r, c] : 0) + keep(r * cols + c) * x[r, c] / (1 - p)
#pragma once
#include <cstdint>

#include "core/counter_random.h"

namespace zn::cpu {

struct DropoutMask {
  uint64_t key = 0;        // the stream's state (counter_stream_key)
  uint64_t threshold = 0;  // draws below it drop their element: p * 2^64
  float scale = 1.0f;      // 1 / (1 - p), what kept elements are multiplied by
};

// The mask of drop probability p in [0, 1) for a stream key.
DropoutMask dropout_mask(double p, uint64_t key);

ZN_HOST_DEVICE inline bool dropout_keeps(const DropoutMask& mask, uint64_t index) {
  return counter_bits(mask.key, index) >= mask.threshold;
}

// y = dropout(x) over rows x cols f32 elements, or y += dropout(x) with accumulate (the
// backward: d loss / d x of dropout(x) is dropout(d loss / d output) with the same mask).
void dropout_forward(long rows, long cols, const DropoutMask& mask, const float* x, float* y, bool accumulate);

}  // namespace zn::cpu
