// The CPU addon's Model class: the shared binding (model_binding.h) over the CPU model.
#include "addon/model_binding.h"

#include "addon/register.h"
#include "model/mistral.h"

namespace zn::addon {

void register_model(Napi::Env env, Napi::Object exports) {
  register_model_class<model::MistralModel>(env, exports);
}

}  // namespace zn::addon
