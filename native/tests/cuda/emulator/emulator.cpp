// The fiber scheduler and runtime API of the CPU emulation (see cuda_runtime.h).
#include <ucontext.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <string>

#include "cuda_runtime.h"

struct EmuStream {};
struct EmuEvent {
  std::chrono::steady_clock::time_point when;
  long recorded_at = 0;  // the queue position of its latest record; 0: never recorded
};

namespace emu {

Thread* current = nullptr;
dim3 block_idx, block_dim, grid_dim;

namespace {

constexpr size_t kStackBytes = 256 * 1024;

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  Thread thread;
  bool done = false;
  const long* waits_on = nullptr;  // a barrier's generation counter, while blocked on it
  long waits_for = 0;              // the generation it is blocked in
};

struct Warp {
  long generation = 0;
  int arrived = 0, live = 0;
  size_t bytes = 0;
  std::vector<unsigned char> slots, published;
};

ucontext_t scheduler;
std::vector<Fiber> fibers;
std::vector<Warp> warps;
size_t running = 0;
long block_generation = 0;
int block_arrived = 0, block_live = 0;
long progress = 0;
std::vector<unsigned char> shared_memory;
const std::function<void()>* kernel_body = nullptr;
cudaError_t last_error = cudaSuccess;

// Blocks the running fiber until *generation moves past `value`; the scheduler skips it till then.
void wait_for_change(const long* generation, long value) {
  Fiber& f = fibers[running];
  while (*generation == value) {
    f.waits_on = generation;
    f.waits_for = value;
    swapcontext(&f.context, &scheduler);
  }
  f.waits_on = nullptr;
}

void release_block_if_complete() {
  if (block_arrived > 0 && block_arrived == block_live) {
    block_arrived = 0;
    ++block_generation;
  }
}

void release_warp_if_complete(Warp& w) {
  if (w.arrived > 0 && w.arrived == w.live) {
    w.arrived = 0;
    w.published = w.slots;
    ++w.generation;
  }
}

void fiber_entry() {
  (*kernel_body)();
  Fiber& f = fibers[running];
  f.done = true;
  ++progress;
  --block_live;
  release_block_if_complete();
  Warp& w = warps[size_t(f.thread.warp)];
  --w.live;
  release_warp_if_complete(w);
}

}  // namespace

void sync_block() {
  const long generation = block_generation;
  ++block_arrived;
  ++progress;
  release_block_if_complete();
  wait_for_change(&block_generation, generation);
}

void warp_exchange(const void* mine, size_t bytes, std::vector<unsigned char>& all) {
  Warp& w = warps[size_t(current->warp)];
  if (w.arrived == 0) {
    w.bytes = bytes;
    w.slots.assign(32 * bytes, 0);
  } else if (w.bytes != bytes) {
    std::fprintf(stderr, "emulator: lanes of warp %d disagree on a warp-wide instruction (divergence)\n", current->warp);
    std::abort();
  }
  std::memcpy(w.slots.data() + size_t(current->lane) * bytes, mine, bytes);
  const long generation = w.generation;
  ++w.arrived;
  ++progress;
  release_warp_if_complete(w);
  wait_for_change(&w.generation, generation);
  all = w.published;
}

unsigned char* dynamic_smem() { return shared_memory.data(); }

void check_launch(dim3 grid, dim3 block, size_t smem) {
  const size_t threads = size_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.y > 65535 || grid.z > 65535 || smem > 227 * 1024) {
    std::fprintf(stderr, "emulator: bad launch grid (%u,%u,%u) block (%u,%u,%u) smem %zu\n", grid.x, grid.y,
                 grid.z, block.x, block.y, block.z, smem);
    last_error = cudaErrorInvalidValue;
  }
}

void run_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  if (last_error != cudaSuccess) return;
  const size_t threads = size_t(block.x) * block.y * block.z;
  grid_dim = grid;
  block_dim = block;
  kernel_body = &body;
  if (fibers.size() < threads) fibers.resize(threads);
  warps.assign((threads + 31) / 32, Warp{});
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        block_idx = dim3(x, y, z);
        shared_memory.assign(smem, 0xff);  // NaN in f32 and bf16: unwritten reads show up
        block_generation = 0;
        block_arrived = 0;
        block_live = int(threads);
        for (size_t w = 0; w < warps.size(); ++w)
          warps[w] = Warp{0, 0, int(std::min<size_t>(32, threads - 32 * w)), 0, {}, {}};
        for (size_t i = 0; i < threads; ++i) {
          Fiber& f = fibers[i];
          if (!f.stack) f.stack.reset(new char[kStackBytes]);
          f.done = false;
          f.waits_on = nullptr;
          f.thread = Thread{dim3(unsigned(i % block.x), unsigned(i / block.x % block.y), unsigned(i / (block.x * block.y))),
                            int(i % 32), int(i / 32), {}, {}};
          getcontext(&f.context);
          f.context.uc_stack.ss_sp = f.stack.get();
          f.context.uc_stack.ss_size = kStackBytes;
          f.context.uc_link = &scheduler;
          makecontext(&f.context, fiber_entry, 0);
        }
        for (;;) {
          bool alive = false;
          const long before = progress;
          for (size_t i = 0; i < threads; ++i) {
            if (fibers[i].done) continue;
            alive = true;
            if (fibers[i].waits_on && *fibers[i].waits_on == fibers[i].waits_for) continue;
            running = i;
            current = &fibers[i].thread;
            swapcontext(&scheduler, &fibers[i].context);
          }
          if (!alive) break;
          if (progress == before) {
            std::fprintf(stderr, "emulator: deadlock in block (%u,%u,%u): threads wait at different barriers\n", x, y, z);
            std::abort();
          }
        }
      }
  current = nullptr;
}

namespace {

struct Queued {
  long position;
  std::function<void()> work;
};
std::deque<Queued> queue;
long issued = 0;  // the queue position of the last work issued

// cudaMallocHost's blocks, by start: copies to and from them are asynchronous, so they are
// queued; a pageable host buffer is read or written at the call, as the CUDA runtime does.
std::map<const char*, size_t> pinned;

bool is_pinned(const void* p) {
  const char* c = static_cast<const char*>(p);
  auto it = pinned.upper_bound(c);
  if (it == pinned.begin()) return false;
  --it;
  return c < it->first + it->second;
}

// Runs queued work up to and including queue position `until`.
void run_until(long until) {
  while (!queue.empty() && queue.front().position <= until) {
    Queued next = std::move(queue.front());
    queue.pop_front();
    next.work();
  }
}

void drain() { run_until(issued); }

}  // namespace

// ZN_EMULATOR_EAGER=1 runs device work at the call instead, the other extreme a GPU may pick:
// then a copy that lands in a buffer the host is still reading shows up.
void enqueue(std::function<void()> work) {
  static const bool eager = [] {
    const char* value = std::getenv("ZN_EMULATOR_EAGER");
    return value && std::string(value) == "1";
  }();
  queue.push_back({++issued, std::move(work)});
  if (eager) drain();
}

}  // namespace emu

using emu::last_error;

cudaError_t cudaGetLastError() {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return last_error; }
const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated CUDA error"; }
const char* cudaGetErrorName(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaErrorEmulated"; }
cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* p) {
  emu::drain();  // cudaFree waits for the device
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  const cudaError_t e = cudaMalloc(p, bytes);
  if (e == cudaSuccess) emu::pinned[static_cast<const char*>(*p)] = bytes;
  return e;
}
cudaError_t cudaFreeHost(void* p) {
  emu::drain();
  emu::pinned.erase(static_cast<const char*>(p));
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  emu::drain();
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  if (kind == cudaMemcpyDeviceToHost && !emu::is_pinned(dst)) return cudaMemcpy(dst, src, bytes, kind);
  if (kind == cudaMemcpyHostToDevice && !emu::is_pinned(src)) {
    // Pageable: the runtime stages the source before returning, so the caller may reuse it.
    auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                               static_cast<const unsigned char*>(src) + bytes);
    emu::enqueue([=] { std::memcpy(dst, staged->data(), bytes); });
    return cudaSuccess;
  }
  emu::enqueue([=] { std::memcpy(dst, src, bytes); });
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  emu::drain();
  std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  emu::enqueue([=] { std::memset(p, value, bytes); });
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = new EmuStream;
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  emu::drain();  // its queued work still runs
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
  emu::drain();
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  emu::drain();
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new EmuEvent;
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  emu::run_until(e->recorded_at);  // a record still queued would write to it
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  emu::enqueue([e] { e->when = std::chrono::steady_clock::now(); });
  e->recorded_at = emu::issued;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  emu::run_until(e->recorded_at);  // never recorded: returns at once, as CUDA does
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  emu::run_until(std::max(a->recorded_at, b->recorded_at));
  *ms = std::chrono::duration<float, std::milli>(b->when - a->when).count();
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int) {
  std::snprintf(prop->name, sizeof prop->name, "CPU emulator");
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 1;
  prop->totalGlobalMem = size_t(1) << 32;
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  *free_bytes = *total_bytes = size_t(1) << 32;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
