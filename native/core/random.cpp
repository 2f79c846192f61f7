#include "core/random.h"

#include <cmath>

#include "core/counter_random.h"
#include "core/thread_pool.h"

namespace zn {

namespace {

// A uniform in (0, 1) from 53 random bits, offset by half a step so that log() never sees 0.
double to_uniform(uint64_t bits) { return (double(bits >> 11) + 0.5) * 0x1.0p-53; }

// Pair k of the stream: the splitmix64 sequence's draws 2k+1 and 2k+2 from state `key`, through
// Box-Muller; element 2k takes the cosine branch, 2k+1 the sine branch.
template <typename Store>
void fill(size_t n, uint64_t seed, uint64_t stream, double std, Store store) {
  const uint64_t key = counter_stream_key(seed, stream);
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  parallel_for(n, size_t(1) << 14, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end;) {
      const uint64_t k = i / 2;
      const double radius = std * std::sqrt(-2.0 * std::log(to_uniform(counter_bits(key, 2 * k))));
      const double angle = kTwoPi * to_uniform(counter_bits(key, 2 * k + 1));
      if (i % 2 == 0) {
        store(i, float(radius * std::cos(angle)));
        if (i + 1 < end) store(i + 1, float(radius * std::sin(angle)));
        i += 2;
      } else {
        store(i, float(radius * std::sin(angle)));
        i += 1;
      }
    }
  });
}

}  // namespace

double uniform_draw(uint64_t seed, uint64_t stream, uint64_t index) {
  return to_uniform(counter_bits(counter_stream_key(seed, stream), index));
}

void fill_normal(size_t n, uint64_t seed, uint64_t stream, double std, float* out) {
  fill(n, seed, stream, std, [out](size_t i, float x) { out[i] = x; });
}

void fill_normal(size_t n, uint64_t seed, uint64_t stream, double std, bf16* out) {
  fill(n, seed, stream, std, [out](size_t i, float x) { out[i] = f32_to_bf16(x); });
}

}  // namespace zn
