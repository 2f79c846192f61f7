// The host side of generation, shared by the CPU and CUDA models: which positions the new tokens
// of one extend call take, which KvCache rows they go to, and which keys each sequence attends
// over (decoder.h's CachedStep). A call carries, for some sequences, the tokens that continue
// them: a fresh sequence's whole prompt (any length: it attends over its own keys, and the
// cache keeps the last window of them), or, for sequences already in the cache, up to as many
// tokens as fit before the rolling buffer would wrap within the call (one at a time when
// decoding: writing a token's k and v first only overwrites a position its window has left).
#pragma once
#include <cstdint>
#include <vector>

#include "model/kv_cache.h"

namespace zn::model {

struct ExtendRequest {
  int sequences = 0;
  const int32_t* slots = nullptr;   // [sequences] KvCache slots, distinct, taken
  const int32_t* counts = nullptr;  // [sequences] new tokens of each, >= 1
  const int32_t* tokens = nullptr;  // the new tokens, sequence after sequence
};

struct ExtendPlan {
  long tokens = 0;
  bool keys_from_cache = true;  // false: every sequence is fresh and attends over its own keys
  std::vector<int32_t> cu_seqlens;   // [sequences + 1] query rows
  std::vector<int32_t> positions;    // [tokens]
  std::vector<int32_t> targets;      // [tokens] all -100 (no log-probs are gathered)
  std::vector<int32_t> cache_rows;   // [tokens] -1: not kept
  std::vector<int32_t> k_begin, k_len;  // [sequences]
  std::vector<int32_t> k_positions;     // [key rows]: the cache's rows (only this call's slots set), or = positions
  long key_rows = 0;

  cpu::AttentionSequences keys(const int32_t* cu_seqlens_at, const int32_t* positions_at, const int32_t* k_begin_at,
                               const int32_t* k_len_at, const int32_t* k_positions_at) const;
};

// Checks the request (slots, counts, token ids in [0, vocab), at most max_tokens new tokens,
// positions below max_context), then appends the tokens to the cache and plans the call.
// Errors name the sequence and the field; nothing is appended when one is raised.
ExtendPlan plan_extend(KvCache& cache, const ExtendRequest& request, long max_tokens, long vocab, long max_context);

}  // namespace zn::model
