// The gradient of an untied embedding table, held as the rows that have one.
//
// d loss / d embed_tokens is non-zero only in the rows of the tokens an optimizer step has
// looked up: at most its token count (2048 of 32000 rows on the small bench preset), while a
// dense [vocab, dim] f32 buffer, as torch keeps, is 62.5 MiB there. A row gets a zeroed slot
// the first time a token touches it after clear(); every other row's gradient is exactly zero,
// and that is what the norm, AdamW and getGradient see (dense_rows writes the zeros), so the
// optimizer's bits are a dense gradient's.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace zn::model {

class RowGradient {
 public:
  // reserve_rows: slots allocated up front (the rows one micro-batch can touch); more are
  // added as gradient accumulation touches new rows, up to `rows`.
  RowGradient(long rows, long width, long reserve_rows);

  // slots[t] = the slot of row ids[t] (every id in [0, rows)), giving new rows zeroed slots.
  // values() may move.
  void assign(const int32_t* ids, long count, int32_t* slots);
  float* values() { return values_.data(); }  // [slots(), width]
  long slots() const { return long(row_of_slot_.size()); }
  long slot_of(long row) const { return slot_of_row_[size_t(row)]; }  // -1: no gradient
  void clear();  // every row's gradient back to zero

  // Rows [first, first + count) as dense f32 [count, width].
  void dense_rows(long first, long count, float* out) const;
  // Sum of squares of the whole table's gradient (in f64, over the stored rows).
  double sum_of_squares() const;

  // Bytes held for a table of `rows` x `width` with `reserve_rows` slots (the memory plan).
  static size_t planned_bytes(long rows, long width, long reserve_rows);

 private:
  long rows_, width_;
  std::vector<int32_t> slot_of_row_;
  std::vector<int32_t> row_of_slot_;
  std::vector<float> values_;
};

}  // namespace zn::model
