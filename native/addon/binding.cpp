#include "addon/binding.h"

#include <cmath>
#include <exception>
#include <utility>

namespace zn::addon {

Options::Options(const Napi::CallbackInfo& info, const char* op) : env_(info.Env()), op_(op) {
  if (info.Length() < 1 || !info[0].IsObject()) error("expects an options object");
  object_ = info[0].As<Napi::Object>();
}

Options::Options(const Options& parent, Napi::Object object, std::string where)
    : env_(parent.env_), object_(object), op_(parent.op_), where_(std::move(where)), held_(parent.held_) {}

void Options::error(const std::string& message) const {
  throw Napi::TypeError::New(env_, std::string(op_) + ": " + where_ + message);
}

Options Options::object(const char* name) const {
  Napi::Value value = field(name);
  if (!value.IsObject() || value.IsArray()) error(std::string("'") + name + "' must be an object");
  return Options(*this, value.As<Napi::Object>(), where_ + "in '" + name + "': ");
}

std::vector<Options> Options::objects(const char* name) const {
  Napi::Value value = field(name);
  if (!value.IsArray()) error(std::string("'") + name + "' must be an array of objects");
  Napi::Array array = value.As<Napi::Array>();
  std::vector<Options> out;
  for (uint32_t i = 0; i < array.Length(); ++i) {
    Napi::Value item = array.Get(i);
    const std::string where = std::string(name) + "[" + std::to_string(i) + "]";
    if (!item.IsObject() || item.IsArray()) error("'" + where + "' must be an object");
    out.push_back(Options(*this, item.As<Napi::Object>(), where_ + "in '" + where + "': "));
  }
  return out;
}

std::vector<std::string> Options::strings(const char* name) const {
  Napi::Value value = field(name);
  if (!value.IsArray()) error(std::string("'") + name + "' must be an array of strings");
  Napi::Array array = value.As<Napi::Array>();
  std::vector<std::string> out;
  for (uint32_t i = 0; i < array.Length(); ++i) {
    Napi::Value item = array.Get(i);
    if (!item.IsString()) error(std::string("'") + name + "[" + std::to_string(i) + "]' must be a string");
    out.push_back(item.As<Napi::String>().Utf8Value());
  }
  return out;
}

std::vector<int64_t> Options::integers(const char* name) const {
  Napi::Value value = field(name);
  if (!value.IsArray()) error(std::string("'") + name + "' must be an array of integers");
  Napi::Array array = value.As<Napi::Array>();
  std::vector<int64_t> out;
  for (uint32_t i = 0; i < array.Length(); ++i) {
    Napi::Value item = array.Get(i);
    const double d = item.IsNumber() ? item.As<Napi::Number>().DoubleValue() : NAN;
    if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9007199254740991.0) {
      error(std::string("'") + name + "[" + std::to_string(i) + "]' must be an integer");
    }
    out.push_back(int64_t(d));
  }
  return out;
}

std::map<std::string, std::string> Options::string_map_or_empty(const char* name) const {
  std::map<std::string, std::string> out;
  if (!has(name)) return out;
  Napi::Value value = object_.Get(name);
  if (!value.IsObject() || value.IsArray()) error(std::string("'") + name + "' must be an object of strings");
  Napi::Object object = value.As<Napi::Object>();
  Napi::Array keys = object.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    const std::string key = keys.Get(i).As<Napi::String>().Utf8Value();
    Napi::Value item = object.Get(key);
    if (!item.IsString()) error(std::string("'") + name + "." + key + "' must be a string");
    out.emplace(key, item.As<Napi::String>().Utf8Value());
  }
  return out;
}

void Options::size_error(const char* name, size_t got, size_t expected) const {
  error(std::string("'") + name + "' has " + std::to_string(got) + " elements, expected " +
        std::to_string(expected));
}

bool Options::has(const char* name) const {
  if (!object_.Has(name)) return false;
  Napi::Value value = object_.Get(name);
  return !value.IsUndefined() && !value.IsNull();
}

Napi::Value Options::field(const char* name) const {
  if (!has(name)) error(std::string("missing option '") + name + "'");
  return object_.Get(name);
}

int64_t Options::integer(const char* name) const {
  Napi::Value value = field(name);
  if (!value.IsNumber()) error(std::string("'") + name + "' must be a number");
  const double d = value.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9007199254740991.0) {
    error(std::string("'") + name + "' must be an integer, got " + std::to_string(d));
  }
  return int64_t(d);
}

int64_t Options::integer(const char* name, int64_t fallback) const {
  return has(name) ? integer(name) : fallback;
}

double Options::number(const char* name) const {
  Napi::Value value = field(name);
  if (!value.IsNumber()) error(std::string("'") + name + "' must be a number");
  return value.As<Napi::Number>().DoubleValue();
}

double Options::number(const char* name, double fallback) const {
  return has(name) ? number(name) : fallback;
}

bool Options::boolean(const char* name, bool fallback) const {
  if (!has(name)) return fallback;
  Napi::Value value = object_.Get(name);
  if (!value.IsBoolean()) error(std::string("'") + name + "' must be a boolean");
  return value.As<Napi::Boolean>().Value();
}

std::string Options::string(const char* name) const {
  Napi::Value value = field(name);
  if (!value.IsString()) error(std::string("'") + name + "' must be a string");
  return value.As<Napi::String>().Utf8Value();
}

std::string Options::string(const char* name, const std::string& fallback) const {
  return has(name) ? string(name) : fallback;
}

template <typename T, napi_typedarray_type Type>
ArrayView<T> Options::typed(const char* name, const char* type_name) const {
  Napi::Value value = field(name);
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != Type) {
    error(std::string("'") + name + "' must be a " + type_name);
  }
  auto array = value.As<Napi::TypedArrayOf<T>>();
  held_->push_back(value);
  return ArrayView<T>{array.Data(), array.ElementLength()};
}

ArrayView<float> Options::f32(const char* name) const {
  return typed<float, napi_float32_array>(name, "Float32Array");
}
ArrayView<uint16_t> Options::u16(const char* name) const {
  return typed<uint16_t, napi_uint16_array>(name, "Uint16Array (bf16 bits)");
}
ArrayView<int32_t> Options::i32(const char* name) const {
  return typed<int32_t, napi_int32_array>(name, "Int32Array");
}
ArrayView<uint8_t> Options::u8(const char* name) const {
  return typed<uint8_t, napi_uint8_array>(name, "Uint8Array");
}
ArrayView<double> Options::f64(const char* name) const {
  return typed<double, napi_float64_array>(name, "Float64Array");
}
napi_typedarray_type Options::typed_array_type(const char* name) const {
  Napi::Value value = field(name);
  if (!value.IsTypedArray()) error(std::string("'") + name + "' must be a typed array");
  return value.As<Napi::TypedArray>().TypedArrayType();
}
ArrayView<float> Options::f32_or_empty(const char* name) const {
  return has(name) ? f32(name) : ArrayView<float>{};
}
ArrayView<int32_t> Options::i32_or_empty(const char* name) const {
  return has(name) ? i32(name) : ArrayView<int32_t>{};
}

namespace {

class Worker : public Napi::AsyncWorker {
 public:
  Worker(Napi::Env env, std::string op, std::function<void()> work,
         std::function<Napi::Value(Napi::Env)> result, const std::vector<Napi::Value>& held)
      : Napi::AsyncWorker(env, op.c_str()),
        op_(std::move(op)),
        work_(std::move(work)),
        result_(std::move(result)),
        deferred_(Napi::Promise::Deferred::New(env)) {
    for (const Napi::Value& value : held) held_.push_back(Napi::Persistent(value));
  }

  Napi::Promise promise() const { return deferred_.Promise(); }

  void Execute() override {
    try {
      work_();
    } catch (const std::exception& e) {
      SetError(op_ + ": " + e.what());
    } catch (...) {
      SetError(op_ + ": unknown native error");
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (!result_) {
      deferred_.Resolve(env.Undefined());
      return;
    }
    try {
      deferred_.Resolve(result_(env));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  std::string op_;
  std::function<void()> work_;
  std::function<Napi::Value(Napi::Env)> result_;
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::Reference<Napi::Value>> held_;
};

}  // namespace

Napi::Promise run_async(const Options& options, std::function<void()> work,
                        std::function<Napi::Value(Napi::Env)> result) {
  auto* worker = new Worker(options.env(), options.op(), std::move(work), std::move(result), options.held());
  Napi::Promise promise = worker->promise();
  worker->Queue();
  return promise;
}

void run_sync(const Options& options, const std::function<void()>& work) {
  try {
    work();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(options.env(), std::string(options.op()) + ": " + e.what());
  }
}

}  // namespace zn::addon
