// CPU emulation of the CUDA runtime subset the backend uses, for checking the kernels' logic on a
// machine without a GPU (see run.sh). Each CUDA thread is a fiber; a block's fibers run in one OS
// thread, switching only at barriers (__syncthreads, and the warp-wide exchanges behind shuffles,
// ldmatrix and mma), so a missing barrier shows up as a read of data no one has written yet.
// Blocks run one after another. Not a model of timing or of the memory system: of indexing,
// masking, fragment layouts and barrier placement, and of the host's ordering against the device:
// launches, async copies and memsets are queued and run only when the host waits (a stream,
// device or event synchronization, a synchronous copy, a free), so a host that reads a copy's
// result before waiting, or rewrites a pinned source before its copy ran, sees stale data.
// ZN_EMULATOR_EAGER=1 runs that work at the call instead (a copy landing in a pinned buffer the
// host still reads shows up then): the two extremes of what a GPU may do.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <utility>
#include <type_traits>
#include <vector>

#define CUDART_VERSION 13000
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorNoDevice = 100,
  cudaErrorInsufficientDriver = 35,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind { cudaMemcpyHostToHost, cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice, cudaMemcpyDefault };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
using cudaStream_t = struct EmuStream*;
using cudaEvent_t = struct EmuEvent*;

struct cudaDeviceProp {
  char name[256];
  int major, minor, multiProcessorCount;
  size_t totalGlobalMem;
};

namespace emu {

// cp.async copies wait in commit groups until cp.async.wait_group applies them, so a read of
// shared memory before the wait sees the poison the block's shared memory starts with.
struct AsyncCopy {
  void* dst;
  unsigned char data[16];
};
struct Thread {
  dim3 idx;
  int lane, warp;
  std::vector<AsyncCopy> open;
  std::vector<std::vector<AsyncCopy>> committed;
};
extern Thread* current;
extern dim3 block_idx, block_dim, grid_dim;

void sync_block();
// Every lane of the calling warp publishes `mine`, waits for the others, and gets all 32 values.
void warp_exchange(const void* mine, size_t bytes, std::vector<unsigned char>& all);
unsigned char* dynamic_smem();
void run_grid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);
void check_launch(dim3 grid, dim3 block, size_t smem);

// Device work waiting for the host to wait on it, in issue order (one order for every stream: a
// schedule a GPU may also pick).
void enqueue(std::function<void()> work);

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t,
            Args&&... args) {
  check_launch(grid, block, smem);  // configuration errors surface at the launch, as on a GPU
  std::tuple<std::decay_t<Params>...> copied(std::forward<Args>(args)...);
  enqueue([=] { run_grid(grid, block, smem, [&] { std::apply(kernel, copied); }); });
}

// `kernel<<<grid, block, smem, stream>>>(args)` is rewritten by run.sh into
// `::emu::launcher(kernel, grid, block, smem, stream)(args)`.
template <typename Kernel>
struct Launcher {
  Kernel kernel;
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  template <typename... Args>
  void operator()(Args&&... args) const {
    launch(kernel, grid, block, smem, stream, std::forward<Args>(args)...);
  }
};
template <typename Kernel>
Launcher<Kernel> launcher(Kernel kernel, dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = nullptr) {
  return {kernel, grid, block, smem, stream};
}

}  // namespace emu

#define threadIdx (::emu::current->idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)

inline void __syncthreads() { ::emu::sync_block(); }

template <typename T>
T __shfl_xor_sync(unsigned, T value, int lane_mask) {
  std::vector<unsigned char> all;
  ::emu::warp_exchange(&value, sizeof(T), all);
  T out;
  std::memcpy(&out, all.data() + sizeof(T) * size_t(::emu::current->lane ^ lane_mask), sizeof(T));
  return out;
}

// One OS thread runs every fiber: plain read-modify-write is atomic here.
inline float atomicAdd(float* p, float v) { const float old = *p; *p = old + v; return old; }
inline double atomicAdd(double* p, double v) { const double old = *p; *p = old + v; return old; }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  if (v < old) *p = v;
  return old;
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline void sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
inline float exp2f(float x) { return std::exp2(x); }
template <typename T>
inline T min(T a, T b) { return a < b ? a : b; }
template <typename T>
inline T max(T a, T b) { return a < b ? b : a; }

template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int value) {
  return value <= 227 * 1024 ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
cudaError_t cudaMalloc(void** p, size_t bytes);
template <typename T>
cudaError_t cudaMalloc(T** p, size_t bytes) { return cudaMalloc(reinterpret_cast<void**>(p), bytes); }
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocHost(void** p, size_t bytes);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int d);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaRuntimeGetVersion(int* v);
