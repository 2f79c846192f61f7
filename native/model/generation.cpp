// plan_extend (generation.h).
#include "model/generation.h"

#include <algorithm>

#include "core/errors.h"

namespace zn::model {

namespace {

void check_request(const KvCache& cache, const ExtendRequest& r, long max_tokens, long vocab, long max_context) {
  ZN_CHECK(r.sequences >= 1, "generation: an extend call needs at least one sequence");
  const long capacity = cache.shape().capacity;
  std::vector<bool> seen(size_t(cache.shape().slots), false);
  bool all_fresh = true;
  long total = 0;
  for (int s = 0; s < r.sequences; ++s) all_fresh = all_fresh && cache.length(r.slots[s]) == 0;
  for (int s = 0; s < r.sequences; ++s) {
    const int slot = r.slots[s];
    const long length = cache.length(slot), count = r.counts[s];  // length() checks the slot
    ZN_CHECK(!seen[size_t(slot)], "generation: slot ", slot, " appears twice in one call");
    seen[size_t(slot)] = true;
    ZN_CHECK(count >= 1, "generation: sequence ", s, " (slot ", slot, "): counts[", s, "] = ", count,
             " new tokens; at least 1");
    ZN_CHECK(length + count <= max_context, "generation: sequence ", s, " (slot ", slot, ") would reach ",
             length + count, " positions, beyond the context of ", max_context);
    ZN_CHECK(all_fresh || count == 1 || length + count <= capacity, "generation: sequence ", s, " (slot ", slot,
             "): ", count, " new tokens after ", length, " would wrap the cache's ", capacity,
             " rows within one call; give a sequence already in the cache one token a call past its window, or "
             "prefill fresh sequences in a call of their own");
    total += count;
  }
  ZN_CHECK(total <= max_tokens, "generation: ", total, " new tokens in one call, more than maxTokens ", max_tokens);
  for (long t = 0; t < total; ++t) {
    ZN_CHECK(r.tokens[t] >= 0 && r.tokens[t] < vocab, "generation: tokens[", t, "] = ", r.tokens[t],
             " is outside the vocabulary [0, ", vocab, ")");
  }
}

}  // namespace

ExtendPlan plan_extend(KvCache& cache, const ExtendRequest& r, long max_tokens, long vocab, long max_context) {
  check_request(cache, r, max_tokens, vocab, max_context);
  ExtendPlan plan;
  plan.keys_from_cache = false;
  for (int s = 0; s < r.sequences; ++s) plan.keys_from_cache = plan.keys_from_cache || cache.length(r.slots[s]) > 0;
  plan.cu_seqlens.assign(size_t(r.sequences) + 1, 0);
  for (int s = 0; s < r.sequences; ++s) plan.cu_seqlens[size_t(s) + 1] = plan.cu_seqlens[size_t(s)] + r.counts[s];
  plan.tokens = plan.cu_seqlens.back();
  plan.positions.resize(size_t(plan.tokens));
  plan.targets.assign(size_t(plan.tokens), -100);
  plan.cache_rows.resize(size_t(plan.tokens));
  plan.k_begin.resize(size_t(r.sequences));
  plan.k_len.resize(size_t(r.sequences));
  const KvCacheShape& shape = cache.shape();
  plan.key_rows = plan.keys_from_cache ? long(shape.slots) * shape.capacity : plan.tokens;
  plan.k_positions.assign(size_t(plan.key_rows), 0);
  for (int s = 0; s < r.sequences; ++s) {
    const int slot = r.slots[s];
    const size_t begin = size_t(plan.cu_seqlens[size_t(s)]);
    const long first = cache.append(slot, r.counts[s], plan.cache_rows.data() + begin);
    for (long i = 0; i < r.counts[s]; ++i) plan.positions[begin + size_t(i)] = int32_t(first + i);
    if (plan.keys_from_cache) {
      plan.k_begin[size_t(s)] = int32_t(cache.first_row(slot));
      plan.k_len[size_t(s)] = int32_t(cache.cached(slot));
      cache.row_positions(slot, plan.k_positions.data() + cache.first_row(slot));
    } else {
      plan.k_begin[size_t(s)] = int32_t(begin);
      plan.k_len[size_t(s)] = r.counts[s];
    }
  }
  if (!plan.keys_from_cache) plan.k_positions = plan.positions;
  return plan;
}

cpu::AttentionSequences ExtendPlan::keys(const int32_t* cu_seqlens_at, const int32_t* positions_at,
                                         const int32_t* k_begin_at, const int32_t* k_len_at,
                                         const int32_t* k_positions_at) const {
  return {int(k_begin.size()), cu_seqlens_at, positions_at, k_begin_at, k_len_at, k_positions_at, key_rows};
}

}  // namespace zn::model
