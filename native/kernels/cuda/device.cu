// Device discovery and the token-id check (see device.h).
#include "kernels/cuda/device.h"

#include <mutex>

#include "kernels/cuda/device.cuh"

namespace zn::cuda {

int device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status == cudaErrorInsufficientDriver || status == cudaErrorNoDevice || count == 0) {
    int driver = 0;
    cudaDriverGetVersion(&driver);
    cudaGetLastError();  // clear the sticky error so later calls report their own
    fail("no usable CUDA GPU: ", cudaGetErrorString(status), " (driver API version ", driver,
         ", this build needs ", CUDART_VERSION, " or newer)");
  }
  ZN_CUDA_CHECK(status);
  return count;
}

DeviceInfo device_info(int device) {
  device_count();
  if (device < 0) ZN_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  ZN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  DeviceInfo info{};
  info.index = device;
  info.name = prop.name;
  info.major = prop.major;
  info.minor = prop.minor;
  info.multiprocessors = prop.multiProcessorCount;
  int previous = 0;
  ZN_CUDA_CHECK(cudaGetDevice(&previous));
  ZN_CUDA_CHECK(cudaSetDevice(device));
  ZN_CUDA_CHECK(cudaMemGetInfo(&info.free_memory, &info.total_memory));
  ZN_CUDA_CHECK(cudaSetDevice(previous));
  ZN_CUDA_CHECK(cudaDriverGetVersion(&info.driver_version));
  ZN_CUDA_CHECK(cudaRuntimeGetVersion(&info.runtime_version));
  return info;
}

namespace {

// Lowest index whose id is out of range (atomicMin keeps the first one).
__global__ void find_bad_id(const int32_t* ids, long n, long limit, long allowed,
                            unsigned long long* first_bad) {
  for (long i = blockIdx.x * long(blockDim.x) + threadIdx.x; i < n; i += long(gridDim.x) * blockDim.x) {
    const long id = ids[i];
    if ((id < 0 || id >= limit) && id != allowed) atomicMin(first_bad, (unsigned long long)i);
  }
}

struct IdCheckScratch {
  std::mutex mutex;
  unsigned long long* first_bad = nullptr;  // device
};

}  // namespace

void check_ids(const char* op, const char* what, const int32_t* ids, long n, long limit,
               long allowed, cudaStream_t stream) {
  if (n <= 0) return;
  static IdCheckScratch scratch;
  std::lock_guard<std::mutex> lock(scratch.mutex);
  if (!scratch.first_bad) ZN_CUDA_CHECK(cudaMalloc(&scratch.first_bad, sizeof(unsigned long long)));
  ZN_CUDA_CHECK(cudaMemsetAsync(scratch.first_bad, 0xff, sizeof(unsigned long long), stream));
  find_bad_id<<<grid_size(n, 256, 1024), 256, 0, stream>>>(ids, n, limit, allowed, scratch.first_bad);
  ZN_CUDA_CHECK_LAUNCH();
  unsigned long long first_bad = 0;
  ZN_CUDA_CHECK(cudaMemcpyAsync(&first_bad, scratch.first_bad, sizeof first_bad,
                                cudaMemcpyDeviceToHost, stream));
  ZN_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (first_bad == ~0ull) return;
  int32_t value = 0;
  ZN_CUDA_CHECK(cudaMemcpyAsync(&value, ids + first_bad, sizeof value, cudaMemcpyDeviceToHost, stream));
  ZN_CUDA_CHECK(cudaStreamSynchronize(stream));
  fail(op, ": ", what, "[", first_bad, "] = ", value, " is outside [0, ", limit, ")");
}

}  // namespace zn::cuda
