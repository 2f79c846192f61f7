// Process-wide allocator setting for the addon: large blocks go straight back to the OS.
//
// The kernels allocate their scratch per call (the fused log-prob's 32 MiB logits panel, GEMM
// and attention buffers), and Node runs each call on whichever libuv worker thread is free.
// glibc gives every thread its own malloc arena and, after the first large block is freed,
// raises its mmap threshold to that block's size, so later blocks of that size are carved from
// the thread's arena and stay resident when freed: one retained copy per worker thread, which
// grew a small-preset SFT step's peak RSS by ~70 MiB over five steps. A fixed threshold keeps
// every block of 1 MiB or more mmapped, so a freed block is unmapped at once (the price, a
// fresh mapping and its page faults per call, is well under 1 ms per MiB against steps of
// seconds).
#pragma once
#include <cstddef>

namespace zn {

void return_large_blocks_to_os();

// Host memory a new allocation can take without swapping or meeting the OOM killer: the
// kernel's MemAvailable (/proc/meminfo), capped by a cgroup v2 limit (memory.max less
// memory.current) when the process runs in one. 0 when neither can be read (not Linux).
size_t available_host_memory();

}  // namespace zn
