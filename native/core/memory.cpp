#include "core/memory.h"

#include <cstdlib>  // defines __GLIBC__ where the C library is glibc

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

}  // namespace zn
