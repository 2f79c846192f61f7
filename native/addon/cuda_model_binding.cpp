// The CUDA addon's Model class: the shared binding (model_binding.h) over the GPU-resident model,
// so `new (loadNative('cuda')).Model({...})` has the CPU Model's methods and results.
#include "addon/cuda_register.h"
#include "addon/model_binding.h"
#include "model/mistral_cuda.h"

namespace zn::addon {

std::function<void(model::CudaMistralModel&)> gradient_all_reduce(const Options& options, Napi::Object communicator,
                                                                  model::CudaMistralModel*) {
  std::shared_ptr<parallel::NcclCommunicator> open = open_communicator(options, communicator);
  return [open](model::CudaMistralModel& m) { m.all_reduce_gradients(*open); };
}

void register_cuda_model(Napi::Env env, Napi::Object exports) {
  register_model_class<model::CudaMistralModel>(env, exports);
}

}  // namespace zn::addon
