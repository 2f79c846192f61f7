// The CUDA runtime as the rest of the backend sees it: which GPU is there (a missing driver or
// GPU is a zn::Error with a readable message, never a crash), an owning device buffer, and a
// device-side check of token ids that names the first bad one.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "kernels/cuda/check.h"

namespace zn::cuda {

struct DeviceInfo {
  int index;
  std::string name;
  int major, minor;  // compute capability
  int multiprocessors;
  size_t total_memory, free_memory;
  int driver_version, runtime_version;  // e.g. 13000 for 13.0
};

// Number of usable GPUs; throws zn::Error when the driver is missing or too old, or no GPU.
int device_count();
DeviceInfo device_info(int device = -1);  // -1: the current device

// No id outside [0, limit) is allowed (ids are int32, so this value never matches one).
constexpr long kNoAllowedId = -(1L << 40);

// Every ids[i] must lie in [0, limit) or equal `allowed` (e.g. -100 for ignored labels,
// kNoAllowedId for none). Throws "<op>: <what>[i] = v is outside [0, limit)" for the first bad i.
// Synchronises `stream` (one small copy back).
void check_ids(const char* op, const char* what, const int32_t* ids, long n, long limit,
               long allowed, cudaStream_t stream);

// An owning device allocation (cudaMalloc); moves, never copies.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (count) ZN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), count * sizeof(T)));
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(count_, other.count_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (data_) cudaFree(data_);
  }

  T* data() const { return data_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

  void upload(const T* host, size_t count) {
    ZN_CHECK(count <= count_, "DeviceBuffer: upload of ", count, " elements into ", count_);
    ZN_CUDA_CHECK(cudaMemcpy(data_, host, count * sizeof(T), cudaMemcpyHostToDevice));
  }
  void download(T* host, size_t count) const {
    ZN_CHECK(count <= count_, "DeviceBuffer: download of ", count, " elements from ", count_);
    ZN_CUDA_CHECK(cudaMemcpy(host, data_, count * sizeof(T), cudaMemcpyDeviceToHost));
  }

 private:
  T* data_ = nullptr;
  size_t count_ = 0;
};

}  // namespace zn::cuda
