#pragma once
#include <napi.h>

namespace zn::addon {

void register_core(Napi::Env env, Napi::Object exports);
void register_dpo(Napi::Env env, Napi::Object exports);
void register_model(Napi::Env env, Napi::Object exports);
void register_peak(Napi::Env env, Napi::Object exports);
void register_safetensors(Napi::Env env, Napi::Object exports);
void register_sampling(Napi::Env env, Napi::Object exports);

}  // namespace zn::addon
