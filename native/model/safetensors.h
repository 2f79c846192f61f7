// safetensors files: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the bytes.
// Reading memory-maps the file (a 14 GB checkpoint never passes through the JS heap) and
// validates the header: length in bounds, JSON, dtype names, shape x dtype size == byte range,
// ranges in bounds and not overlapping, no duplicate names. Errors name the file and tensor.
// Writing goes to a temporary file in the same folder, is fsynced, then renamed into place.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace zn {

enum class StDType { F32, F16, BF16 };

struct StTensorInfo {
  std::string name;
  StDType dtype;
  std::vector<int64_t> shape;
  uint64_t begin;  // byte offsets into the data section
  uint64_t end;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // throws zn::Error
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<StTensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const StTensorInfo* find(const std::string& name) const;  // nullptr when absent
  const void* data(const StTensorInfo& tensor) const;

  // Converts a tensor to f32 or bf16 into `out` (numel elements), checking the expected shape.
  void read(const std::string& name, const std::vector<int64_t>& expected_shape, DType out_dtype,
            void* out) const;

 private:
  std::string path_;
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_start_ = 0;
  std::vector<StTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct StTensorToWrite {
  std::string name;
  StDType dtype;  // stored dtype; data must already be in it
  std::vector<int64_t> shape;
  const void* data;
};

void write_safetensors(const std::string& path, const std::vector<StTensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata);

}  // namespace zn
