// One persistent pool of worker threads for every kernel. The calling thread takes part, so a
// pool of N threads has N-1 workers. ZN_NUM_THREADS overrides the size (default: hardware
// concurrency). Parallel regions are serialised by a mutex, so kernels may be called from
// several threads (e.g. Node's libuv workers); a parallel_for inside a task runs inline.
#pragma once
#include <cstddef>
#include <functional>

namespace zn {

int num_threads();

// Runs task(begin, end) over [0, count) split into contiguous ranges of at least `grain`
// items, one range per thread at most. Exceptions thrown by a task are re-thrown here.
void parallel_for(size_t count, size_t grain, const std::function<void(size_t, size_t)>& task);

// Runs task(i) for i in [0, count), handing out indices dynamically (for uneven work such as
// attention tiles under a causal mask).
void parallel_for_each(size_t count, const std::function<void(size_t)>& task);

}  // namespace zn
