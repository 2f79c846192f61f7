// The counter-based generator behind every seeded draw (core/random.h's weight initialisation and
// sampling, LoRA's dropout masks): splitmix64's output function over a counter. Draw `index` of
// stream `stream` depends only on (seed, stream, index), so any element can be drawn on its own,
// by any thread, on the CPU or the GPU, and gives the same 64 bits. Header-only and usable from
// device code, so the CUDA kernels draw exactly what the CPU kernels draw.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define ZN_HOST_DEVICE __host__ __device__
#else
#define ZN_HOST_DEVICE
#endif

namespace zn {

constexpr uint64_t kCounterGolden = 0x9e3779b97f4a7c15ull;

// splitmix64's output function: a bijective mix of its 64-bit state.
ZN_HOST_DEVICE inline uint64_t counter_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The state a stream's draws count from.
ZN_HOST_DEVICE inline uint64_t counter_stream_key(uint64_t seed, uint64_t stream) {
  return counter_mix(counter_mix(seed + kCounterGolden) ^ (stream * 0xd1b54a32d192ed03ull));
}

// Draw `index` of the stream keyed `key`: the splitmix64 sequence's draw index + 1 from that state.
ZN_HOST_DEVICE inline uint64_t counter_bits(uint64_t key, uint64_t index) {
  return counter_mix(key + (index + 1) * kCounterGolden);
}

}  // namespace zn
