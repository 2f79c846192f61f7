// The CUDA addon's entry point (zn_cuda.node, built with -DZN_CUDA=ON into <build>/cuda/).
// Loading it needs no GPU: the first call that does (info() included) throws a JS Error saying
// why no GPU could be used (no driver, a driver older than the runtime, no device), never a crash.
#include <napi.h>

#include "addon/binding.h"
#include "addon/cuda_register.h"
#include "core/cpu_features.h"
#include "core/thread_pool.h"
#include "core/version.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm.h"

namespace {

// info() -> {version, backend: 'cuda', cpu fields as the CPU addon, deviceName, computeCapability,
//            multiprocessors, totalMemory, freeMemory (bytes), driverVersion, runtimeVersion, cublasLt}
Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  zn::cuda::DeviceInfo device{};
  try {
    device = zn::cuda::device_info();
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, std::string("info: ") + e.what());
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("version", ZN_VERSION);
  out.Set("backend", "cuda");
  out.Set("cpuFeatures", zn::cpu_features_string());
  out.Set("cpuPath", zn::cpu_path_name(zn::cpu_path()));
  out.Set("threads", zn::num_threads());
  out.Set("deviceName", device.name);
  out.Set("computeCapability", std::to_string(device.major) + "." + std::to_string(device.minor));
  out.Set("multiprocessors", device.multiprocessors);
  out.Set("totalMemory", double(device.total_memory));
  out.Set("freeMemory", double(device.free_memory));
  out.Set("driverVersion", device.driver_version);
  out.Set("runtimeVersion", device.runtime_version);
  out.Set("cublasLt", zn::cuda::have_cublaslt());
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  zn::addon::register_cuda_kernels(env, exports);
  zn::addon::register_cuda_model(env, exports);
  zn::addon::register_nccl(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(zn_cuda, Init)
