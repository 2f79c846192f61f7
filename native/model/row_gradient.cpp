#include "model/row_gradient.h"

#include <algorithm>
#include <cstring>

#include "core/errors.h"
#include "kernels/cpu/adamw.h"

namespace zn::model {

RowGradient::RowGradient(long rows, long width, long reserve_rows)
    : rows_(rows), width_(width), slot_of_row_(size_t(rows), -1) {
  const size_t reserve = size_t(std::min(rows, reserve_rows));
  row_of_slot_.reserve(reserve);
  values_.reserve(reserve * size_t(width));
}

size_t RowGradient::planned_bytes(long rows, long width, long reserve_rows) {
  const size_t reserve = size_t(std::min(rows, reserve_rows));
  return size_t(rows) * sizeof(int32_t) + reserve * (sizeof(int32_t) + size_t(width) * sizeof(float));
}

void RowGradient::assign(const int32_t* ids, long count, int32_t* slots) {
  for (long t = 0; t < count; ++t) {
    const int32_t row = ids[t];
    ZN_CHECK(row >= 0 && row < rows_, "row gradient: id ", row, " at ", t, " outside [0, ", rows_, ")");
    int32_t& slot = slot_of_row_[size_t(row)];
    if (slot < 0) {
      slot = int32_t(row_of_slot_.size());
      row_of_slot_.push_back(row);
    }
    slots[t] = slot;
  }
  values_.resize(row_of_slot_.size() * size_t(width_), 0.0f);  // new slots zeroed
}

void RowGradient::clear() {
  for (int32_t row : row_of_slot_) slot_of_row_[size_t(row)] = -1;
  row_of_slot_.clear();
  values_.clear();
}

void RowGradient::dense_rows(long first, long count, float* out) const {
  for (long r = 0; r < count; ++r) {
    const int32_t slot = slot_of_row_[size_t(first + r)];
    float* dst = out + r * width_;
    if (slot < 0) {
      std::memset(dst, 0, size_t(width_) * sizeof(float));
    } else {
      std::memcpy(dst, values_.data() + size_t(slot) * size_t(width_), size_t(width_) * sizeof(float));
    }
  }
}

double RowGradient::sum_of_squares() const {
  return cpu::sum_of_squares(long(values_.size()), values_.data());
}

}  // namespace zn::model
