// Seeded N(0, std^2) draws for weight initialisation. Counter-based (core/counter_random.h): element i of stream
// `stream` depends only on (seed, stream, i), so a tensor's values are the same for any thread
// count or chunking, and each parameter (one stream each) can be drawn on its own. Elements 2k and
// 2k+1 are the two Box-Muller outputs (cosine, sine) of a pair of 53-bit uniforms: draws 2k+1 and
// 2k+2 of a splitmix64 sequence keyed by (seed, stream).
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/bf16.h"

namespace zn {

void fill_normal(size_t n, uint64_t seed, uint64_t stream, double std, float* out);
// Draw `index` of stream `stream` as a uniform in (0, 1): counter-based like fill_normal, so a
// sampler's k-th draw of a sequence depends on (seed, stream, k) only.
double uniform_draw(uint64_t seed, uint64_t stream, uint64_t index);
// The same draws rounded to bf16 (round to nearest even).
void fill_normal(size_t n, uint64_t seed, uint64_t stream, double std, bf16* out);

}  // namespace zn
