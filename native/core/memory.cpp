#include "core/memory.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>  // defines __GLIBC__ where the C library is glibc
#include <fstream>
#include <string>
#include <utility>

#if defined(__GLIBC__)
#include <malloc.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#endif

namespace zn {

void return_large_blocks_to_os() {
#if defined(__GLIBC__)
  // Setting M_MMAP_THRESHOLD also turns off glibc's dynamic threshold (mallopt(3)).
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
}

namespace {

// The first number in a file (memory.max holds "max" when unlimited: then 0).
size_t read_number(const char* path) {
  std::ifstream in(path);
  unsigned long long value = 0;
  return in >> value ? size_t(value) : 0;
}

size_t mem_available() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  unsigned long long kib = 0;
  while (in >> key >> kib) {
    if (key == "MemAvailable:") return size_t(kib) * 1024;
    in.ignore(256, '\n');
  }
  return 0;
}

}  // namespace

size_t available_host_memory() {
  size_t available = mem_available();
  const size_t limit = read_number("/sys/fs/cgroup/memory.max");
  if (limit > 0) {
    const size_t used = read_number("/sys/fs/cgroup/memory.current");
    const size_t left = limit > used ? limit - used : 0;
    available = available ? std::min(available, left) : left;
  }
  return available;
}

namespace {

constexpr size_t kHugePage = size_t(2) << 20;

}  // namespace

#if defined(MAP_ANONYMOUS)

HugePageMemory::HugePageMemory(size_t bytes) {
  if (bytes == 0) return;
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  // Map a huge page more than needed and trim both ends, so the kept range starts on a 2 MiB
  // boundary: the kernel backs only aligned 2 MiB ranges with huge pages.
  void* mapped = ::mmap(nullptr, rounded + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) return;
  char* start = static_cast<char*>(mapped);
  char* aligned = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(start) + kHugePage - 1) / kHugePage * kHugePage);
  if (aligned > start) ::munmap(start, size_t(aligned - start));
  char* end = start + rounded + kHugePage;
  if (end > aligned + rounded) ::munmap(aligned + rounded, size_t(end - (aligned + rounded)));
#if defined(MADV_HUGEPAGE)
  ::madvise(aligned, rounded, MADV_HUGEPAGE);  // a hint: without THP the pages stay 4 KiB
#endif
  data_ = aligned;
  bytes_ = rounded;
}

void HugePageMemory::release() {
  if (data_) ::munmap(data_, bytes_);
  data_ = nullptr;
  bytes_ = 0;
}

#else

HugePageMemory::HugePageMemory(size_t bytes) {
  if (bytes == 0) return;
  data_ = std::calloc(1, bytes);
  if (data_) bytes_ = bytes;
}

void HugePageMemory::release() {
  std::free(data_);
  data_ = nullptr;
  bytes_ = 0;
}

#endif

HugePageMemory::~HugePageMemory() { release(); }

HugePageMemory::HugePageMemory(HugePageMemory&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

HugePageMemory& HugePageMemory::operator=(HugePageMemory&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

}  // namespace zn
