#pragma once
#include <napi.h>

namespace zn::addon {

// Kernel-level functions of the CUDA addon (cuda_binding.cpp).
void register_cuda_kernels(Napi::Env env, Napi::Object exports);
// The Model class over the GPU-resident model (cuda_model_binding.cpp).
void register_cuda_model(Napi::Env env, Napi::Object exports);

}  // namespace zn::addon
