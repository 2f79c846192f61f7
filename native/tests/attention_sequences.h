// Inputs for attention over separate query and key sequences (kernels/cpu/attention.h), shared by
// the C++ tests and the CUDA checks: per sequence the positions of its query rows and of its key
// rows in buffer order, laid out as the arrays of AttentionSequences.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cpu/attention.h"

namespace zn::test {

// Positions from..to-1 in order.
inline std::vector<int32_t> positions(int32_t from, int32_t to) {
  std::vector<int32_t> p;
  for (int32_t x = from; x < to; ++x) p.push_back(x);
  return p;
}

// The rows of a rolling buffer of `slots` rows after positions 0..length-1 were written to
// slot position % slots: the last min(length, slots) positions, out of order once it wraps.
inline std::vector<int32_t> rolling_buffer(int32_t length, int32_t slots) {
  std::vector<int32_t> rows(size_t(std::min(length, slots)));
  for (int32_t p = std::max(0, length - slots); p < length; ++p) rows[size_t(p % slots)] = p;
  return rows;
}

struct SequenceRows {
  std::vector<int32_t> q_positions, k_positions;
  long capacity = 0;  // key buffer rows of the sequence (>= its keys; 0: exactly the keys)
};

// Sequences packed one after another: query rows in q, key buffers in k and v. Buffer rows past
// a sequence's keys have position -1 (no kernel may read them).
struct SequenceArrays {
  std::vector<int32_t> cu_seqlens_q{0}, q_positions, k_begin, k_len, k_positions;
  long query_rows = 0, key_rows = 0;

  explicit SequenceArrays(const std::vector<SequenceRows>& seqs) {
    for (const SequenceRows& seq : seqs) {
      const long keys = long(seq.k_positions.size());
      cu_seqlens_q.push_back(cu_seqlens_q.back() + int32_t(seq.q_positions.size()));
      q_positions.insert(q_positions.end(), seq.q_positions.begin(), seq.q_positions.end());
      k_begin.push_back(int32_t(key_rows));
      k_len.push_back(int32_t(keys));
      k_positions.insert(k_positions.end(), seq.k_positions.begin(), seq.k_positions.end());
      key_rows += std::max(keys, seq.capacity);
      k_positions.resize(size_t(key_rows), -1);
    }
    query_rows = cu_seqlens_q.back();
  }

  cpu::AttentionSequences view() const {
    return {int(k_begin.size()), cu_seqlens_q.data(), q_positions.data(), k_begin.data(),
            k_len.data(),        k_positions.data(),  key_rows};
  }
};

}  // namespace zn::test
