// A step's buffers as one declarative table (llm.c's tensor specs, with lifetimes): each entry
// has a name, a size, a category and a lifetime, the step phases (decoder.h's StepPhases) from
// the first that writes it to the last that reads it. The plan gives each entry an offset into
// one region, so that entries whose lifetimes overlap never share bytes; memory is reused only
// where the table says so, which keeps every layout exactly as its table reads:
// - Own: bytes of its own, after the entries before it;
// - Over(host): from the host's offset, reusing memory dead for the whole of its lifetime; the
//   plan checks it against every entry it overlaps (a recomputed value, the lm_head's panel);
// - InPlace(host): the host's bytes while both live, one op's output over another's input in
//   the same phase (rmsnorm's dx over n2, dgate over gate): the decoder's op order ends one use
//   before the next begins, finer than phases can say, so only its other overlaps are checked.
// Debug builds (ZN_DEBUG_WORKSPACE, on in the CMake build the C++ tests use) poison an entry's
// bytes when its last phase ends (Decoder::end_phase), so a read after its end gives NaN.
#pragma once
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace zn::model {

// Inclusive phase ordinals.
struct Lifetime {
  int first = 0;
  int last = 0;
  bool overlaps(const Lifetime& other) const { return first <= other.last && other.first <= last; }
};

// The MemoryPlan category an entry's own bytes count in.
enum class BufferCategory { Activations, Workspaces };

enum class Placement { Own, Over, InPlace };

struct BufferEntry {
  std::string name;
  size_t bytes = 0;
  Lifetime live;
  BufferCategory category = BufferCategory::Activations;
  Placement placement = Placement::Own;
  int host = -1;  // Over / InPlace: the entry whose offset it takes
  size_t offset = 0;
  size_t end() const { return offset + bytes; }
};

// A byte range of the planned region.
struct ByteRange {
  size_t offset = 0;
  size_t bytes = 0;
};

class BufferPlan {
 public:
  // Every offset is a multiple of alignment (the kernels' vector loads; cuBLASLt's preference).
  explicit BufferPlan(size_t alignment) : alignment_(alignment) {}

  // Each adds an entry and returns its id (its index in entries()).
  int add(std::string name, size_t bytes, Lifetime live, BufferCategory category = BufferCategory::Activations);
  int over(std::string name, size_t bytes, int host, Lifetime live);
  int in_place(std::string name, size_t bytes, int host, Lifetime live);

  // Throws zn::Error naming both entries when two that share bytes are live in a common phase
  // (an InPlace entry and its host excepted), or an InPlace entry outgrows its host. Call once
  // the table is complete; it also prepares ended().
  void check();

  size_t offset(int id) const { return entries_[size_t(id)].offset; }
  size_t end(int id) const { return entries_[size_t(id)].end(); }
  size_t total() const { return used_; }
  size_t bytes(BufferCategory category) const;  // the aligned Own bytes of that category
  const std::vector<BufferEntry>& entries() const { return entries_; }

  // The bytes whose every entry ended at `phase`: what a debug build poisons when it ends (an
  // entry's bytes less those of entries live after it, such as an InPlace successor).
  const std::vector<ByteRange>& ended(int phase) const;

 private:
  int append(BufferEntry entry);
  std::string describe(const BufferEntry& e) const;
  bool same_storage(int a, int b) const;  // one is the other's InPlace host (transitively)

  size_t alignment_;
  size_t used_ = 0;
  std::vector<BufferEntry> entries_;
  std::vector<std::vector<ByteRange>> ended_;  // by phase, from check()
};

// Whether the models poison their buffers when a lifetime ends: ZN_DEBUG_WORKSPACE where the core
// library was compiled (one answer for every translation unit).
bool poison_ended_buffers();

// The arena's bytes of entry `id` as T*; a null base (a plan only counted) gives null.
template <typename T>
T* place(void* base, const BufferPlan& plan, int id) {
  return base ? static_cast<T*>(static_cast<void*>(static_cast<char*>(base) + plan.offset(id))) : nullptr;
}

}  // namespace zn::model
