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
// The rank holds AdamW's moments (and in bf16 mode the f32 master) of its range only, on the CPU
// model (cpu_state.h) and on the GPU model alike (cuda_state.h: on the device, or on the host with
// offload_optimizer), so shard files written by either resume on the other. The gradient buffers
// and the weights the kernels read stay whole on every rank (ZeRO stage 2's reduce-scatter leaves
// only the owned range summed, but the buffer the backward accumulates into is whole). After the
// step the owner of each range sends its new weights to the others (an all-gather in place:
// MPI_Allgatherv on CPU ranks, grouped NCCL broadcasts on GPU ranks), so every rank's weights stay
// those of one process.
#pragma once
#include <algorithm>
#include <cstddef>
#include <vector>

#include "core/bf16.h"
#include "core/errors.h"
#include "model/parameters.h"

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

// One contiguous run of a model's weights that the ranks all-gather in place after a sharded step:
// `count` elements (f32, or bf16 bits) at `data` (host memory on the CPU model, device memory on
// the GPU model), of which rank r owns counts[r], rank after rank.
struct WeightSegment {
  void* data = nullptr;
  size_t count = 0;
  bool bf16 = false;
  std::vector<size_t> counts;
};

// The weight runs a group sharded `count` ways all-gathers: each run of members laid end to end
// both in the group and in the weights (the whole table in one run when nothing is frozen) at
// `weights` (the table's f32 values, or its bf16 bits), then bf16 mode's f32 norm weights beside
// their rounding (norm_of(p): a norm's f32 values, null for any other parameter).
template <class NormOf>
std::vector<WeightSegment> group_weight_segments(const ParameterGroup& group, int count, void* weights, bool bf16,
                                                 NormOf norm_of) {
  std::vector<WeightSegment> out;
  const size_t total = group.numel();
  char* base = static_cast<char*>(weights);
  const size_t width = bf16 ? sizeof(zn::bf16) : sizeof(float);
  const std::vector<const ParameterSpec*>& members = group.members();
  for (size_t i = 0; i < members.size();) {
    size_t j = i + 1;
    while (j < members.size() && members[j]->offset == members[j - 1]->offset + members[j - 1]->numel) ++j;
    const size_t begin = group.offset(*members[i]);
    const size_t end = group.offset(*members[j - 1]) + members[j - 1]->numel;
    out.push_back({base + members[i]->offset * width, end - begin, bf16, shard_counts(total, count, {begin, end})});
    i = j;
  }
  for (const ParameterSpec* p : members) {
    if (float* norm = norm_of(*p)) {
      const size_t at = group.offset(*p);
      out.push_back({norm, p->numel, false, shard_counts(total, count, {at, at + p->numel})});
    }
  }
  return out;
}

// The part of a group member that a rank owns, in the member's own element numbering (may be empty).
inline ElementRange owned_part(const ParameterGroup& group, ElementRange shard, const ParameterSpec& p) {
  const size_t at = group.offset(p);
  const ElementRange part = intersect({at, at + p.numel}, shard);
  return {part.begin - at, part.end - at};
}

}  // namespace zn::model
