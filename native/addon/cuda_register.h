#pragma once
#include <napi.h>

#include <memory>

#include "addon/binding.h"
#include "parallel/nccl_collectives.h"

namespace zn::addon {

// Kernel-level functions of the CUDA addon (cuda_binding.cpp).
void register_cuda_kernels(Napi::Env env, Napi::Object exports);
// The Model class over the GPU-resident model (cuda_model_binding.cpp).
void register_cuda_model(Napi::Env env, Napi::Object exports);
// ncclLibrary(), ncclUniqueId() and the NcclCommunicator class (nccl_binding.cpp).
void register_nccl(Napi::Env env, Napi::Object exports);
// The communicator of an open NcclCommunicator object; an error naming `options`' op otherwise.
std::shared_ptr<parallel::NcclCommunicator> open_communicator(const Options& options, Napi::Object object);

}  // namespace zn::addon
