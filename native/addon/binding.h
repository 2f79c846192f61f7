// Helpers shared by every binding in native/addon: read a JS options object into C++ values with
// errors that name the operation and the field, and run native work off the main thread behind
// a Promise. Nothing outside native/addon includes a Node header.
#pragma once
#include <napi.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace zn::addon {

template <typename T>
struct ArrayView {
  T* data = nullptr;
  size_t size = 0;
};

// Reads fields of the options object passed as the first argument of `op`.
class Options {
 public:
  Options(const Napi::CallbackInfo& info, const char* op);

  const char* op() const { return op_; }
  Napi::Env env() const { return env_; }
  bool has(const char* name) const;
  int64_t integer(const char* name) const;
  int64_t integer(const char* name, int64_t fallback) const;
  double number(const char* name) const;
  double number(const char* name, double fallback) const;
  bool boolean(const char* name, bool fallback) const;
  std::string string(const char* name) const;
  std::string string(const char* name, const std::string& fallback) const;

  ArrayView<float> f32(const char* name) const;
  ArrayView<uint16_t> u16(const char* name) const;  // bf16 bit patterns
  ArrayView<int32_t> i32(const char* name) const;
  ArrayView<uint8_t> u8(const char* name) const;
  ArrayView<double> f64(const char* name) const;
  // The element type of a typed-array field (an error naming the field when it is not one).
  napi_typedarray_type typed_array_type(const char* name) const;
  // Optional arrays: an empty view when the field is absent, null or undefined.
  ArrayView<float> f32_or_empty(const char* name) const;
  ArrayView<int32_t> i32_or_empty(const char* name) const;

  // A nested options object; its errors say where it sits ("in 'config': ...").
  Options object(const char* name) const;
  // An array of objects, each read as nested options ("in 'shards[2]': ...").
  std::vector<Options> objects(const char* name) const;
  std::vector<std::string> strings(const char* name) const;
  // An array of integers (e.g. a shape), each a safe integer.
  std::vector<int64_t> integers(const char* name) const;
  // An object whose values are all strings (e.g. file metadata); empty when absent.
  std::map<std::string, std::string> string_map_or_empty(const char* name) const;

  // Requires that an array field holds exactly `expected` elements.
  template <typename T>
  void expect_size(const char* name, const ArrayView<T>& view, size_t expected) const {
    if (view.size != expected) size_error(name, view.size, expected);
  }

  // The JS values read so far (nested options included) that own memory, so an async worker
  // can keep them alive.
  const std::vector<Napi::Value>& held() const { return *held_; }

  [[noreturn]] void error(const std::string& message) const;

 private:
  Napi::Value field(const char* name) const;
  template <typename T, napi_typedarray_type Type>
  ArrayView<T> typed(const char* name, const char* type_name) const;
  [[noreturn]] void size_error(const char* name, size_t got, size_t expected) const;

  Options(const Options& parent, Napi::Object object, std::string where);

  Napi::Env env_;
  Napi::Object object_;
  const char* op_;
  std::string where_;  // for nested options: "in 'config': "
  std::shared_ptr<std::vector<Napi::Value>> held_ = std::make_shared<std::vector<Napi::Value>>();
};

// Runs `work` on a libuv worker thread and returns a Promise. A zn::Error (or any
// std::exception) thrown by work rejects the promise with an Error whose message starts with
// the op name. `result` (optional) builds the resolved value on the main thread.
Napi::Promise run_async(const Options& options, std::function<void()> work,
                        std::function<Napi::Value(Napi::Env)> result = nullptr);

// Runs `work` synchronously, turning C++ exceptions into JS exceptions named after the op.
void run_sync(const Options& options, const std::function<void()>& work);

// Each op family's bindings register themselves here (see register.cpp).
void register_all(Napi::Env env, Napi::Object exports);

}  // namespace zn::addon
