// The keys and values of the sequences being generated, per layer. Mistral's sliding window
// makes it a rolling buffer: each sequence has a slot of `capacity` rows per layer (the sliding
// window, or the longest context of a model without one), position p lives in row p % capacity
// of its slot, so a slot never holds more than `capacity` positions however long the sequence
// grows, and positions keep counting past the window (RoPE and the mask read positions, never
// rows). Memory: 2 x layers x slots x capacity x kv_heads x head_dim x dtype bytes, planned up
// front. Sequences join and leave at token boundaries: acquire() a slot, release() it at EOS.
//
// This class is the host-side bookkeeping (which slots are taken, how long each sequence is,
// which row holds which position) over memory its owner allocates where the backend's kernels
// run; the attention over separate query and key sequences reads a slot's rows with their
// positions (kernels/cpu/attention.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "model/backend.h"
#include "model/parameters.h"

namespace zn::model {

struct KvCacheShape {
  int layers = 0;
  int kv_heads = 0;
  int head_dim = 0;
  long capacity = 0;  // rows per slot
  int slots = 0;      // sequences at once
  DType dtype = DType::F32;

  long row_elements() const { return long(kv_heads) * head_dim; }
  size_t layer_bytes() const;  // keys (or values) of one layer: slots x capacity rows
  size_t bytes() const;        // keys and values of every layer
  // A model's cache for contexts up to max_context tokens: capacity min(window, max_context).
  static KvCacheShape for_model(const MistralConfig& config, long max_context, int slots, DType dtype);
};

class KvCache {
 public:
  // memory: shape.bytes() where the kernels run, laid out as keys(0), values(0), keys(1), ...
  KvCache(const KvCacheShape& shape, void* memory);

  const KvCacheShape& shape() const { return shape_; }
  Tensor keys(int layer) const;    // [slots x capacity, kv_heads x head_dim]
  Tensor values(int layer) const;  // likewise

  int acquire();  // a free slot with no positions yet, or -1 when every slot is taken
  void release(int slot);
  int free_slots() const;
  long length(int slot) const;  // positions the sequence has: its next position

  // Takes the next `count` positions of a slot's sequence; rows[i] is the row (in keys() and
  // values()) where position first + i goes, or -1 when a later position of the same call takes
  // that row (count > capacity: only the last capacity positions are kept). Returns first.
  long append(int slot, long count, int32_t* rows);
  // The keys a slot's sequence attends over: rows [first_row, first_row + cached) of keys()
  // and values(); positions[r] is the position row first_row + r holds.
  long first_row(int slot) const;
  long cached(int slot) const;
  void row_positions(int slot, int32_t* positions) const;

 private:
  void check_taken(int slot, const char* op) const;

  KvCacheShape shape_;
  char* memory_;
  std::vector<long> length_;  // by slot; -1: free
};

}  // namespace zn::model
