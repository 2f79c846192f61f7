// The CPU addon's entry point: registers each op family's bindings. This layer only converts
// arguments, runs workers and converts errors (see native/addon/binding.h).
#include <napi.h>

#include "addon/binding.h"
#include "core/cpu_features.h"
#include "core/memory.h"
#include "core/thread_pool.h"
#include "core/version.h"

namespace {

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("version", ZN_VERSION);
  out.Set("backend", "cpu");
  out.Set("cpuFeatures", zn::cpu_features_string());
  out.Set("cpuPath", zn::cpu_path_name(zn::cpu_path()));
  out.Set("threads", zn::num_threads());
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  zn::return_large_blocks_to_os();
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  zn::addon::register_all(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(zn_cpu, Init)
