// The CUDA addon's Model class: the shared binding (model_binding.h) over the GPU-resident model,
// so `new (loadNative('cuda')).Model({...})` has the CPU Model's methods and results.
#include "addon/cuda_register.h"
#include "addon/model_binding.h"
#include "model/mistral_cuda.h"

namespace zn::addon {

std::function<void(model::CudaMistralModel&)> nccl_work(const Options& options, Napi::Object communicator,
                                                        model::CudaMistralModel*, NcclWork work) {
  std::shared_ptr<parallel::NcclCommunicator> open = open_communicator(options, communicator);
  return [open, work](model::CudaMistralModel& m) {
    switch (work) {
      case NcclWork::AllReduceGradients: return m.all_reduce_gradients(*open);
      case NcclWork::ReduceScatterGradients: return m.reduce_scatter_gradients(*open);
      case NcclWork::AllGatherWeights: return m.all_gather_weights(*open);
    }
  };
}

void register_cuda_model(Napi::Env env, Napi::Object exports) {
  register_model_class<model::CudaMistralModel>(env, exports);
}

}  // namespace zn::addon
