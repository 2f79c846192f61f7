// The CUDA addon's Model class: the shared binding (model_binding.h) over the GPU-resident model,
// so `new (loadNative('cuda')).Model({...})` has the CPU Model's methods and results.
#include "addon/cuda_register.h"
#include "addon/model_binding.h"
#include "model/mistral_cuda.h"

namespace zn::addon {

void register_cuda_model(Napi::Env env, Napi::Object exports) {
  register_model_class<model::CudaMistralModel>(env, exports);
}

}  // namespace zn::addon
