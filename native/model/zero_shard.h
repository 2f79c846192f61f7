// ZeRO sharding of a trained parameter group (DeepSpeed's stages 1 and 2 on data-parallel ranks).
//
// A group's flat layout (parameters.h: members in table order, laid end to end) of T elements is
// cut into `count` contiguous element ranges, rank r owning [boundary(r), boundary(r + 1)) with
// boundary(r) = floor(r T / count) rounded down to a multiple of kShardAlign (16 f32 = one 64-byte
// cache line, one AVX-512 vector), boundary(0) = 0 and boundary(count) = T. A range may begin and
// end inside a parameter: AdamW is elementwise (its kernel gives the same bits for any split,
// kernels/cpu/adamw.h) and its per-parameter hyperparameters (weight decay) are applied parameter
// by parameter over the owned part of each.
//
// The rank holds AdamW's moments (and in bf16 mode the f32 master) of its range only; the
// gradients and the weights the kernels read stay whole on every rank. After the step the owner of
// each range sends its new weights to the others (an all-gather in place, MPI_Allgatherv), so every
// rank's weights stay those of one process.
#pragma once
#include <algorithm>
#include <cstddef>
#include <vector>

#include "core/errors.h"

namespace zn::model {

// This process's place among the ranks that shard the optimizer state (count 1: not sharded).
struct ShardSpec {
  int rank = 0;
  int count = 1;
};

struct ElementRange {
  size_t begin = 0;
  size_t end = 0;
  size_t size() const { return end - begin; }
  bool empty() const { return end <= begin; }
};

constexpr size_t kShardAlign = 16;

inline size_t shard_boundary(size_t total, int rank, int count) {
  if (rank <= 0) return 0;
  if (rank >= count) return total;
  // floor(total rank / count) without overflow: total = q count + m.
  const size_t q = total / size_t(count), m = total % size_t(count);
  const size_t even = q * size_t(rank) + m * size_t(rank) / size_t(count);
  return even / kShardAlign * kShardAlign;
}

inline ElementRange shard_range(size_t total, const ShardSpec& shard) {
  ZN_CHECK(shard.count >= 1 && shard.rank >= 0 && shard.rank < shard.count, "model: shard rank ", shard.rank,
           " of ", shard.count, " is not a rank");
  return {shard_boundary(total, shard.rank, shard.count), shard_boundary(total, shard.rank + 1, shard.count)};
}

inline ElementRange intersect(ElementRange a, ElementRange b) {
  const size_t begin = std::max(a.begin, b.begin), end = std::min(a.end, b.end);
  return begin < end ? ElementRange{begin, end} : ElementRange{begin, begin};
}

// Each rank's element count of the part [within.begin, within.end) of a group of `total`
// elements sharded `count` ways (the counts of an all-gather or reduce-scatter over that part;
// they add up to within.size(), rank after rank).
inline std::vector<size_t> shard_counts(size_t total, int count, ElementRange within) {
  std::vector<size_t> counts(static_cast<size_t>(count));
  for (int r = 0; r < count; ++r) counts[size_t(r)] = intersect(shard_range(total, {r, count}), within).size();
  return counts;
}

}  // namespace zn::model
