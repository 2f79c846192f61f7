// One line per op family: each binding file defines its register_* function.
#include "addon/binding.h"
#include "addon/register.h"

namespace zn::addon {

void register_all(Napi::Env env, Napi::Object exports) {
  register_core(env, exports);
  register_dpo(env, exports);
  register_model(env, exports);
  register_peak(env, exports);
  register_safetensors(env, exports);
  register_sampling(env, exports);
}

}  // namespace zn::addon
