// Bindings for safetensors files: the header (for checkpoint planning and validation), single
// tensors (for tests and small tensors; model weights are loaded in native code), and writing.
#include <memory>
#include <optional>
#include <vector>

#include "addon/binding.h"
#include "addon/register.h"
#include "core/errors.h"
#include "model/safetensors.h"

namespace zn::addon {

namespace {

Napi::Array shape_array(Napi::Env env, const std::vector<int64_t>& shape) {
  Napi::Array out = Napi::Array::New(env, shape.size());
  for (size_t i = 0; i < shape.size(); ++i) out.Set(uint32_t(i), Napi::Number::New(env, double(shape[i])));
  return out;
}

// readSafetensorsHeader({path}) -> {tensors: [{name, dtype, shape, dataOffsets}], metadata}.
// Tensors come in file order; the whole header is validated (the file is opened as for loading).
Napi::Value ReadSafetensorsHeader(const Napi::CallbackInfo& info) {
  Options options(info, "readSafetensorsHeader");
  const std::string path = options.string("path");
  std::unique_ptr<SafetensorsFile> file;
  run_sync(options, [&] { file = std::make_unique<SafetensorsFile>(path); });
  Napi::Env env = info.Env();
  Napi::Array tensors = Napi::Array::New(env, file->tensors().size());
  for (size_t i = 0; i < file->tensors().size(); ++i) {
    const StTensorInfo& t = file->tensors()[i];
    Napi::Object entry = Napi::Object::New(env);
    entry.Set("name", t.name);
    entry.Set("dtype", st_dtype_name(t.dtype));
    entry.Set("shape", shape_array(env, t.shape));
    Napi::Array offsets = Napi::Array::New(env, 2);
    offsets.Set(uint32_t(0), Napi::Number::New(env, double(t.begin)));
    offsets.Set(uint32_t(1), Napi::Number::New(env, double(t.end)));
    entry.Set("dataOffsets", offsets);
    tensors.Set(uint32_t(i), entry);
  }
  Napi::Object metadata = Napi::Object::New(env);
  for (const auto& [key, value] : file->metadata()) metadata.Set(key, value);
  Napi::Object out = Napi::Object::New(env);
  out.Set("tensors", tensors);
  out.Set("metadata", metadata);
  return out;
}

DType output_dtype(const Options& options) {
  const std::string dtype = options.string("dtype");
  if (dtype == "f32") return DType::F32;
  if (dtype == "bf16") return DType::BF16;
  options.error("'dtype' must be 'f32' or 'bf16', got '" + dtype + "'");
}

// readTensor({path, name, dtype: 'f32'|'bf16'}) -> Promise<Float32Array | Uint16Array (bf16 bits)>.
Napi::Value ReadTensor(const Napi::CallbackInfo& info) {
  Options options(info, "readTensor");
  const std::string path = options.string("path");
  const std::string name = options.string("name");
  const DType dtype = output_dtype(options);
  auto values = std::make_shared<std::vector<uint8_t>>();
  return run_async(
      options,
      [path, name, dtype, values] {
        SafetensorsFile file(path);
        const StTensorInfo* tensor = file.find(name);
        if (!tensor) fail("safetensors file '", path, "': no tensor named '", name, "'");
        values->resize(size_t(tensor->numel()) * dtype_size(dtype));
        file.read(name, tensor->shape, dtype, values->data());
      },
      [values, dtype](Napi::Env env) -> Napi::Value {
        const size_t count = values->size() / dtype_size(dtype);
        Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, values->size());
        std::copy(values->begin(), values->end(), static_cast<uint8_t*>(buffer.Data()));
        if (dtype == DType::F32) return Napi::Float32Array::New(env, count, buffer, 0);
        return Napi::Uint16Array::New(env, count, buffer, 0);
      });
}

// One entry of writeSafetensors' `tensors`: F32 data is a Float32Array, BF16 and F16 data a
// Uint16Array of bit patterns, with exactly prod(shape) elements.
StTensorToWrite tensor_to_write(const Options& options) {
  StTensorToWrite tensor;
  tensor.name = options.string("name");
  const std::string dtype = options.string("dtype");
  const std::optional<StDType> parsed = st_dtype_from_name(dtype);
  if (!parsed || !st_dtype_is_float(*parsed)) options.error("'dtype' must be 'F32', 'BF16' or 'F16', got '" + dtype + "'");
  tensor.dtype = *parsed;
  tensor.shape = options.integers("shape");
  size_t numel = 1;
  for (int64_t d : tensor.shape) {
    if (d < 0) options.error("'shape' must hold non-negative integers");
    numel *= size_t(d);
  }
  if (tensor.dtype == StDType::F32) {
    ArrayView<float> data = options.f32("data");
    options.expect_size("data", data, numel);
    tensor.data = data.data;
  } else {
    ArrayView<uint16_t> data = options.u16("data");
    options.expect_size("data", data, numel);
    tensor.data = data.data;
  }
  return tensor;
}

// writeSafetensors({path, tensors: [{name, dtype, shape, data}], metadata?}) -> Promise<void>.
// Written atomically, tensors in the order given.
Napi::Value WriteSafetensors(const Napi::CallbackInfo& info) {
  Options options(info, "writeSafetensors");
  const std::string path = options.string("path");
  std::vector<StTensorToWrite> tensors;
  for (const Options& entry : options.objects("tensors")) tensors.push_back(tensor_to_write(entry));
  const std::map<std::string, std::string> metadata = options.string_map_or_empty("metadata");
  return run_async(options, [path, tensors, metadata] { write_safetensors(path, tensors, metadata); });
}

}  // namespace

void register_safetensors(Napi::Env env, Napi::Object exports) {
  exports.Set("readSafetensorsHeader", Napi::Function::New(env, ReadSafetensorsHeader, "readSafetensorsHeader"));
  exports.Set("readTensor", Napi::Function::New(env, ReadTensor, "readTensor"));
  exports.Set("writeSafetensors", Napi::Function::New(env, WriteSafetensors, "writeSafetensors"));
}

}  // namespace zn::addon
