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

// Zeroed host memory for large buffers that are streamed over whole, such as the offloaded
// optimizer's master weights and moments: an anonymous mapping, 2 MiB aligned, its pages
// committed when first written and backed by transparent huge pages where the kernel allows
// (madvise). 2 MiB pages take 512x fewer page faults on first touch (the first AdamW step of an
// offloaded Mistral-7B writes 54 GiB of fresh moments) and fewer TLB misses when streamed.
// data() is null when the mapping fails; the owner reports it.
class HugePageMemory {
 public:
  HugePageMemory() = default;
  explicit HugePageMemory(size_t bytes);
  ~HugePageMemory();
  HugePageMemory(HugePageMemory&& other) noexcept;
  HugePageMemory& operator=(HugePageMemory&& other) noexcept;
  HugePageMemory(const HugePageMemory&) = delete;
  HugePageMemory& operator=(const HugePageMemory&) = delete;

  void* data() const { return data_; }
  size_t size() const { return bytes_; }

 private:
  void release();
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace zn
