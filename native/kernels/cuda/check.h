// Checked CUDA and cuBLASLt calls: a failure throws zn::Error naming the call, the source line
// and the runtime's own message, so an error reaches JS (or the device check) as text, never as
// a bare code. Kernel launches are followed by ZN_CUDA_CHECK_LAUNCH() (launch-configuration
// errors surface there; faults inside a kernel surface at the next synchronising call).
#pragma once
#include <cuda_runtime_api.h>

#include "core/errors.h"

#define ZN_CUDA_CHECK(call)                                                                  \
  do {                                                                                       \
    const cudaError_t zn_cuda_status_ = (call);                                              \
    if (zn_cuda_status_ != cudaSuccess)                                                      \
      ::zn::fail("CUDA error: ", #call, " at ", __FILE__, ":", __LINE__, ": ",               \
                 cudaGetErrorName(zn_cuda_status_), ": ", cudaGetErrorString(zn_cuda_status_)); \
  } while (0)

#define ZN_CUDA_CHECK_LAUNCH() ZN_CUDA_CHECK(cudaGetLastError())
