// safetensors files: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the bytes.
// Reading memory-maps the file (a 14 GB checkpoint never passes through the JS heap) and
// validates the header as the reference reader (the safetensors crate) does: length in bounds,
// UTF-8 JSON object, known dtype names, shape x dtype size == byte range, ranges that tile the
// data section exactly (in offset order, no gaps, no overlaps, nothing left over), no duplicate
// names, __metadata__ a map of strings. Errors name the file and tensor.
// Writing goes to a temporary file in the same folder, is fsynced, then renamed into place.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace zn {

// Every dtype the format defines. Only F32, F16 and BF16 convert to the model's dtypes; the
// others are accepted in a header (a file may carry them) and refused when read.
enum class StDType {
  F32, F16, BF16,
  F64, I64, I32, I16, I8, U8, U16, U32, U64, BOOL, C64,
  F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ, F8_E5M2FNUZ, F6_E2M3, F6_E3M2, F4,
};

const char* st_dtype_name(StDType dtype);                   // "BF16"
std::optional<StDType> st_dtype_from_name(const std::string& name);
int st_dtype_bits(StDType dtype);                            // 4 for F4, 16 for BF16
bool st_dtype_is_float(StDType dtype);                       // F32, F16 or BF16

struct StTensorInfo {
  std::string name;
  StDType dtype;
  std::vector<int64_t> shape;
  uint64_t begin;  // byte offsets into the data section
  uint64_t end;
  int64_t numel() const;
  uint64_t bytes() const { return end - begin; }
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // throws zn::Error
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // In file (offset) order.
  const std::vector<StTensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const StTensorInfo* find(const std::string& name) const;  // nullptr when absent
  // The tensor's bytes in the mapping. Not necessarily aligned to the element size.
  const void* data(const StTensorInfo& tensor) const;

  // Converts a tensor (F32, F16 or BF16) to f32 or bf16 into `out` (numel elements), checking
  // the expected shape. Narrowing to bf16 rounds to nearest even.
  void read(const std::string& name, const std::vector<int64_t>& expected_shape, DType out_dtype,
            void* out) const;

 private:
  void parse_header(uint64_t header_length);

  std::string path_;
  int fd_ = -1;
  const uint8_t* map_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_start_ = 0;
  std::vector<StTensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

struct StTensorToWrite {
  std::string name;
  StDType dtype;  // stored dtype
  std::vector<int64_t> shape;
  const void* data;  // numel elements, in `source` dtype when set, else in `dtype`
  // When set (F32, F16 or BF16, as is `dtype`), data is converted while it is written, so f32
  // master weights can be saved as bf16 without a second copy in memory. Rounds to nearest even.
  std::optional<StDType> source = std::nullopt;
};

// Writes tensors in the order given; the header is padded with spaces to a multiple of 8 bytes
// as the reference writer does. `metadata` is written as __metadata__ when not empty.
void write_safetensors(const std::string& path, const std::vector<StTensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata);

}  // namespace zn
