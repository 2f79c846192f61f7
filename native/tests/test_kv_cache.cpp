// KvCache's bookkeeping against a direct simulation of a rolling buffer: every position written,
// in order, into row p % capacity of its slot; what a row holds is then the last position
// written there. Slots, bounds and the memory layout are checked beside it.
#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "harness.h"
#include "model/kv_cache.h"

using namespace zn;
using namespace zn::model;

namespace {

KvCacheShape small_shape(long capacity, int slots) {
  KvCacheShape s;
  s.layers = 3;
  s.kv_heads = 2;
  s.head_dim = 4;
  s.capacity = capacity;
  s.slots = slots;
  s.dtype = DType::BF16;
  return s;
}

}  // namespace

ZN_TEST("kv_cache.bytes_and_layout") {
  const KvCacheShape s = small_shape(5, 2);
  EXPECT(s.bytes() == size_t(2 * 3 * 2 * 5 * 2 * 4 * 2), "bytes ", s.bytes());
  std::vector<char> memory(s.bytes());
  KvCache cache(s, memory.data());
  // keys(0), values(0), keys(1), ... back to back, each slots x capacity rows.
  for (int l = 0; l < s.layers; ++l) {
    EXPECT(static_cast<char*>(cache.keys(l).data) == memory.data() + size_t(2 * l) * s.layer_bytes());
    EXPECT(static_cast<char*>(cache.values(l).data) == memory.data() + size_t(2 * l + 1) * s.layer_bytes());
    EXPECT(cache.keys(l).dtype == DType::BF16);
  }
  EXPECT(static_cast<char*>(cache.values(s.layers - 1).data) + s.layer_bytes() == memory.data() + memory.size());
}

ZN_TEST("kv_cache.for_model_bounds_capacity_by_the_window") {
  MistralConfig c;
  c.num_layers = 2;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.sliding_window = 4096;
  EXPECT(KvCacheShape::for_model(c, 32768, 4, DType::BF16).capacity == 4096);
  EXPECT(KvCacheShape::for_model(c, 1000, 4, DType::BF16).capacity == 1000);
  c.sliding_window = 0;  // no window: the whole context
  EXPECT(KvCacheShape::for_model(c, 32768, 4, DType::BF16).capacity == 32768);
  // Mistral-7B's bound at batch 1: 2 x 32 layers x 4096 x 8 x 128 x 2 bytes = 512 MiB.
  c.num_layers = 32;
  c.sliding_window = 4096;
  EXPECT(KvCacheShape::for_model(c, 1 << 20, 1, DType::BF16).bytes() == size_t(512) << 20);
}

ZN_TEST("kv_cache.slots_join_and_leave") {
  const KvCacheShape s = small_shape(4, 3);
  std::vector<char> memory(s.bytes());
  KvCache cache(s, memory.data());
  const int a = cache.acquire(), b = cache.acquire(), c = cache.acquire();
  EXPECT(a != b && b != c && a != c && a >= 0 && b >= 0 && c >= 0);
  EXPECT(cache.acquire() == -1 && cache.free_slots() == 0);
  std::vector<int32_t> rows(3);
  cache.append(b, 3, rows.data());
  cache.release(b);
  EXPECT(cache.free_slots() == 1);
  EXPECT(cache.acquire() == b, "a freed slot is taken again");
  EXPECT(cache.length(b) == 0, "a new sequence starts at position 0, got ", cache.length(b));
  test::expect_error([&] { cache.release(7); }, "no slot 7");
  cache.release(a);
  test::expect_error([&] { cache.release(a); }, "holds no sequence");
  test::expect_error([&] { cache.append(a, 1, rows.data()); }, "holds no sequence");
  test::expect_error([&] { cache.append(c, -1, rows.data()); }, "count must be >= 0");
}

// Appends in chunks of varied sizes (single tokens as decoding does, prompt chunks, a chunk
// longer than the capacity) and checks every row and position against the simulation.
ZN_TEST("kv_cache.rolling_rows_match_a_simulated_buffer") {
  const long capacity = 5;
  const KvCacheShape s = small_shape(capacity, 2);
  std::vector<char> memory(s.bytes());
  KvCache cache(s, memory.data());
  const int other = cache.acquire(), slot = cache.acquire();
  std::vector<int32_t> rows(16);
  cache.append(other, 2, rows.data());
  std::map<long, long> simulated;  // row -> last position written there
  long next = 0;
  for (long chunk : {3L, 1L, 1L, 2L, 7L, 1L, 4L, 12L, 1L}) {
    const long first = cache.append(slot, chunk, rows.data());
    EXPECT(first == next, "first position ", first, " expected ", next);
    for (long i = 0; i < chunk; ++i) {
      const long p = next + i, row = long(slot) * capacity + p % capacity;
      if (rows[size_t(i)] == -1) {
        // Skipped only when a later position of the same chunk lands in the same row.
        EXPECT(chunk - i > capacity, "position ", p, " skipped although it is among the chunk's last ", capacity);
        continue;
      }
      EXPECT(rows[size_t(i)] == row, "position ", p, " in row ", rows[size_t(i)], " expected ", row);
      simulated[row] = p;
    }
    next += chunk;
    EXPECT(cache.length(slot) == next);
    EXPECT(cache.cached(slot) == std::min(next, capacity));
    EXPECT(cache.first_row(slot) == long(slot) * capacity);
    std::vector<int32_t> positions(size_t(cache.cached(slot)));
    cache.row_positions(slot, positions.data());
    for (long r = 0; r < cache.cached(slot); ++r) {
      const long row = cache.first_row(slot) + r;
      EXPECT(simulated.count(row) && positions[size_t(r)] == simulated[row], "row ", row, " holds position ",
             positions[size_t(r)], " expected ", simulated[row]);
      // Within the window: the last `capacity` positions of the sequence.
      EXPECT(positions[size_t(r)] >= next - capacity && positions[size_t(r)] < next);
    }
  }
  EXPECT(cache.length(other) == 2, "another slot's sequence is untouched");
}
