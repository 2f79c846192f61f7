// KvCache's bookkeeping (kv_cache.h): slots, lengths and the rolling row of each position.
#include "model/kv_cache.h"

#include <algorithm>

#include "core/errors.h"

namespace zn::model {

size_t KvCacheShape::layer_bytes() const {
  return size_t(slots) * size_t(capacity) * size_t(row_elements()) * dtype_size(dtype);
}

size_t KvCacheShape::bytes() const { return 2 * size_t(layers) * layer_bytes(); }

KvCacheShape KvCacheShape::for_model(const MistralConfig& c, long max_context, int slots, DType dtype) {
  ZN_CHECK(max_context > 0, "kv cache: the context must be positive, got ", max_context);
  KvCacheShape shape;
  shape.layers = c.num_layers;
  shape.kv_heads = c.num_kv_heads;
  shape.head_dim = c.head_dim;
  shape.capacity = c.sliding_window > 0 ? std::min(c.sliding_window, max_context) : max_context;
  shape.slots = slots;
  shape.dtype = dtype;
  return shape;
}

KvCache::KvCache(const KvCacheShape& shape, void* memory)
    : shape_(shape), memory_(static_cast<char*>(memory)), length_(size_t(std::max(shape.slots, 0)), -1) {
  ZN_CHECK(shape.layers > 0 && shape.kv_heads > 0 && shape.head_dim > 0,
           "kv cache: layers, kv_heads and head_dim must be positive, got ", shape.layers, ", ", shape.kv_heads,
           ", ", shape.head_dim);
  ZN_CHECK(shape.capacity > 0, "kv cache: capacity must be positive, got ", shape.capacity);
  ZN_CHECK(shape.slots > 0, "kv cache: slots must be positive, got ", shape.slots);
  ZN_CHECK(long(shape.slots) * shape.capacity <= INT32_MAX, "kv cache: ", shape.slots, " slots of ",
           shape.capacity, " rows exceed the int32 row index");
  ZN_CHECK(memory != nullptr, "kv cache: no memory given");
}

Tensor KvCache::keys(int layer) const {
  ZN_CHECK(layer >= 0 && layer < shape_.layers, "kv cache: no layer ", layer);
  return {memory_ + size_t(2 * layer) * shape_.layer_bytes(), shape_.dtype};
}

Tensor KvCache::values(int layer) const {
  ZN_CHECK(layer >= 0 && layer < shape_.layers, "kv cache: no layer ", layer);
  return {memory_ + size_t(2 * layer + 1) * shape_.layer_bytes(), shape_.dtype};
}

int KvCache::acquire() {
  auto free = std::find(length_.begin(), length_.end(), -1);
  if (free == length_.end()) return -1;
  *free = 0;
  return int(free - length_.begin());
}

void KvCache::check_taken(int slot, const char* op) const {
  ZN_CHECK(slot >= 0 && slot < shape_.slots, "kv cache: ", op, ": no slot ", slot, " (", shape_.slots, " slots)");
  ZN_CHECK(length_[size_t(slot)] >= 0, "kv cache: ", op, ": slot ", slot, " holds no sequence");
}

void KvCache::release(int slot) {
  check_taken(slot, "release");
  length_[size_t(slot)] = -1;
}

int KvCache::free_slots() const { return int(std::count(length_.begin(), length_.end(), -1)); }

long KvCache::length(int slot) const {
  check_taken(slot, "length");
  return length_[size_t(slot)];
}

long KvCache::append(int slot, long count, int32_t* rows) {
  check_taken(slot, "append");
  ZN_CHECK(count >= 0, "kv cache: append: count must be >= 0, got ", count);
  const long first = length_[size_t(slot)], cap = shape_.capacity;
  for (long i = 0; i < count; ++i) {
    const bool overwritten_later = count - i > cap;
    rows[i] = overwritten_later ? -1 : int32_t(first_row(slot) + (first + i) % cap);
  }
  length_[size_t(slot)] = first + count;
  return first;
}

long KvCache::first_row(int slot) const { return long(slot) * shape_.capacity; }

long KvCache::cached(int slot) const { return std::min(length(slot), shape_.capacity); }

// Row r holds the latest position p < length with p % capacity == r.
void KvCache::row_positions(int slot, int32_t* positions) const {
  const long n = length(slot), cap = shape_.capacity;
  for (long r = 0; r < cached(slot); ++r) positions[r] = int32_t(r + cap * ((n - 1 - r) / cap));
}

}  // namespace zn::model
