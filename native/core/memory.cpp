#include "core/memory.h"

#include <algorithm>
#include <cstdlib>  // defines __GLIBC__ where the C library is glibc
#include <fstream>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
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

}  // namespace zn
