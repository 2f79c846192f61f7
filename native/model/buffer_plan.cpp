// The buffer table's planner and checks (buffer_plan.h).
#include "model/buffer_plan.h"

#include <algorithm>

#include "core/errors.h"

namespace zn::model {

namespace {

size_t round_up(size_t bytes, size_t alignment) { return (bytes + alignment - 1) / alignment * alignment; }

// [range) less the union of `cuts`, appended to `out`.
void subtract(ByteRange range, std::vector<ByteRange> cuts, std::vector<ByteRange>& out) {
  std::sort(cuts.begin(), cuts.end(), [](const ByteRange& a, const ByteRange& b) { return a.offset < b.offset; });
  size_t at = range.offset;
  const size_t end = range.offset + range.bytes;
  for (const ByteRange& cut : cuts) {
    if (cut.offset + cut.bytes <= at || cut.offset >= end) continue;
    if (cut.offset > at) out.push_back({at, cut.offset - at});
    at = std::max(at, cut.offset + cut.bytes);
  }
  if (at < end) out.push_back({at, end - at});
}

}  // namespace

int BufferPlan::append(BufferEntry entry) {
  ZN_CHECK(entry.live.first <= entry.live.last, "buffer plan: '", entry.name, "' ends (phase ", entry.live.last,
           ") before it begins (phase ", entry.live.first, ")");
  entries_.push_back(std::move(entry));
  ended_.clear();
  return int(entries_.size()) - 1;
}

int BufferPlan::add(std::string name, size_t bytes, Lifetime live, BufferCategory category) {
  BufferEntry e{std::move(name), bytes, live, category};
  e.offset = used_;
  used_ += round_up(bytes, alignment_);
  return append(std::move(e));
}

int BufferPlan::over(std::string name, size_t bytes, int host, Lifetime live) {
  const BufferEntry& h = entries_.at(size_t(host));
  BufferEntry e{std::move(name), bytes, live, h.category, Placement::Over, host, h.offset};
  ZN_CHECK(e.end() <= used_, "buffer plan: '", e.name, "' over '", h.name, "' runs past the planned bytes");
  return append(std::move(e));
}

int BufferPlan::in_place(std::string name, size_t bytes, int host, Lifetime live) {
  const BufferEntry& h = entries_.at(size_t(host));
  ZN_CHECK(bytes <= h.bytes, "buffer plan: '", name, "' (", bytes, " bytes) does not fit in place of '", h.name,
           "' (", h.bytes, " bytes)");
  return append({std::move(name), bytes, live, h.category, Placement::InPlace, host, h.offset});
}

size_t BufferPlan::bytes(BufferCategory category) const {
  size_t sum = 0;
  for (const BufferEntry& e : entries_) {
    if (e.placement == Placement::Own && e.category == category) sum += round_up(e.bytes, alignment_);
  }
  return sum;
}

std::string BufferPlan::describe(const BufferEntry& e) const {
  return "'" + e.name + "' (bytes " + std::to_string(e.offset) + ".." + std::to_string(e.end()) + ", phases " +
         std::to_string(e.live.first) + ".." + std::to_string(e.live.last) + ")";
}

bool BufferPlan::same_storage(int a, int b) const {
  auto root = [&](int id) {
    while (entries_[size_t(id)].placement == Placement::InPlace) id = entries_[size_t(id)].host;
    return id;
  };
  return root(a) == root(b);
}

void BufferPlan::check() {
  // Own entries never share bytes; every other entry is checked against all it overlaps.
  for (size_t i = 0; i < entries_.size(); ++i) {
    const BufferEntry& a = entries_[i];
    if (a.placement == Placement::Own) continue;
    for (size_t j = 0; j < entries_.size(); ++j) {
      const BufferEntry& b = entries_[j];
      if (i == j || b.end() <= a.offset || a.end() <= b.offset || !a.live.overlaps(b.live)) continue;
      if (a.bytes == 0 || b.bytes == 0 || same_storage(int(i), int(j))) continue;
      fail("buffer plan: ", describe(a), " shares bytes with ", describe(b), " while both are live");
    }
  }
  int last_phase = 0;
  for (const BufferEntry& e : entries_) last_phase = std::max(last_phase, e.live.last);
  ended_.assign(size_t(last_phase) + 1, {});
  for (const BufferEntry& e : entries_) {
    const int phase = e.live.last;
    std::vector<ByteRange> still_live;
    for (const BufferEntry& other : entries_) {
      if (other.live.first <= phase && other.live.last > phase) still_live.push_back({other.offset, other.bytes});
    }
    subtract({e.offset, e.bytes}, std::move(still_live), ended_[size_t(phase)]);
  }
}

const std::vector<ByteRange>& BufferPlan::ended(int phase) const {
  static const std::vector<ByteRange> none;
  return phase >= 0 && size_t(phase) < ended_.size() ? ended_[size_t(phase)] : none;
}

bool poison_ended_buffers() {
#ifdef ZN_DEBUG_WORKSPACE
  return true;
#else
  return false;
#endif
}

}  // namespace zn::model
