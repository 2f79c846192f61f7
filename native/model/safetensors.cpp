// safetensors reading (mmap + header validation + dtype conversion) and atomic writing.
// The checks follow the reference reader (huggingface/safetensors, tensor.rs): header length
// <= 100 MB and within the file; the header UTF-8 JSON (whitespace around it allowed, as
// serde_json allows); unknown fields inside a tensor entry ignored, as serde does; tensors
// sorted by (begin, end) must start at 0 and each begin where the previous one ended; the last
// end must be the end of the file.
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <numeric>
#include <sstream>
#include <tuple>

#include "core/atomic_file.h"
#include "core/bf16.h"
#include "core/errors.h"
#include "core/f16.h"
#include "core/json.h"
#include "core/thread_pool.h"

namespace zn {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference reader's MAX_HEADER_SIZE

struct DTypeEntry {
  StDType dtype;
  const char* name;
  int bits;
};

constexpr DTypeEntry kDTypes[] = {
    {StDType::F32, "F32", 32},         {StDType::F16, "F16", 16},
    {StDType::BF16, "BF16", 16},       {StDType::F64, "F64", 64},
    {StDType::I64, "I64", 64},         {StDType::I32, "I32", 32},
    {StDType::I16, "I16", 16},         {StDType::I8, "I8", 8},
    {StDType::U8, "U8", 8},            {StDType::U16, "U16", 16},
    {StDType::U32, "U32", 32},         {StDType::U64, "U64", 64},
    {StDType::BOOL, "BOOL", 8},        {StDType::C64, "C64", 64},
    {StDType::F8_E5M2, "F8_E5M2", 8},  {StDType::F8_E4M3, "F8_E4M3", 8},
    {StDType::F8_E8M0, "F8_E8M0", 8},  {StDType::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {StDType::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8}, {StDType::F6_E2M3, "F6_E2M3", 6},
    {StDType::F6_E3M2, "F6_E3M2", 6},  {StDType::F4, "F4", 4},
};

const DTypeEntry& entry(StDType dtype) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.dtype == dtype) return e;
  }
  fail("safetensors: unknown dtype enum value ", int(dtype));
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

// numel * bits / 8 with overflow checks; nullopt on overflow or a partial byte.
std::optional<uint64_t> byte_size(const std::vector<int64_t>& shape, StDType dtype) {
  uint64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d != 0 && numel > UINT64_MAX / uint64_t(d)) return std::nullopt;
    numel *= uint64_t(d);
  }
  const uint64_t bits = uint64_t(st_dtype_bits(dtype));
  if (numel > UINT64_MAX / bits) return std::nullopt;
  if ((numel * bits) % 8 != 0) return std::nullopt;
  return numel * bits / 8;
}

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Element conversions between the float storage dtypes, one element at a time from
// possibly unaligned bytes.
float load_as_f32(StDType dtype, const uint8_t* p) {
  switch (dtype) {
    case StDType::F32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case StDType::BF16: {
      bf16 b;
      std::memcpy(&b.bits, p, 2);
      return bf16_to_f32(b);
    }
    case StDType::F16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return f16_bits_to_f32(h);
    }
    default:
      fail("safetensors: cannot convert from ", st_dtype_name(dtype));
  }
}

void store_from_f32(StDType dtype, float value, uint8_t* p) {
  switch (dtype) {
    case StDType::F32:
      std::memcpy(p, &value, 4);
      return;
    case StDType::BF16: {
      const bf16 b = f32_to_bf16(value);
      std::memcpy(p, &b.bits, 2);
      return;
    }
    case StDType::F16: {
      const uint16_t h = f32_to_f16_bits(value);
      std::memcpy(p, &h, 2);
      return;
    }
    default:
      fail("safetensors: cannot convert to ", st_dtype_name(dtype));
  }
}

StDType storage_of(DType dtype) { return dtype == DType::F32 ? StDType::F32 : StDType::BF16; }

// Converts count elements; the same dtype is a plain copy (bit-exact, NaN payloads kept).
// Every widening is exact and every narrowing rounds once to nearest even, because f32 holds
// F16 and BF16 values exactly.
void convert(StDType from, const uint8_t* src, StDType to, uint8_t* dst, size_t count) {
  const size_t from_size = size_t(st_dtype_bits(from) / 8);
  const size_t to_size = size_t(st_dtype_bits(to) / 8);
  if (from == to) {
    std::memcpy(dst, src, count * from_size);
    return;
  }
  for (size_t i = 0; i < count; ++i) store_from_f32(to, load_as_f32(from, src + i * from_size), dst + i * to_size);
}

void convert_parallel(StDType from, const uint8_t* src, StDType to, uint8_t* dst, size_t count) {
  const size_t from_size = size_t(st_dtype_bits(from) / 8);
  const size_t to_size = size_t(st_dtype_bits(to) / 8);
  parallel_for(count, size_t(1) << 16, [&](size_t begin, size_t end) {
    convert(from, src + begin * from_size, to, dst + begin * to_size, end - begin);
  });
}

[[noreturn]] void fail_file(const std::string& path, const std::string& what) {
  fail("safetensors file '", path, "': ", what);
}

}  // namespace

const char* st_dtype_name(StDType dtype) { return entry(dtype).name; }

std::optional<StDType> st_dtype_from_name(const std::string& name) {
  for (const DTypeEntry& e : kDTypes) {
    if (name == e.name) return e.dtype;
  }
  return std::nullopt;
}

int st_dtype_bits(StDType dtype) { return entry(dtype).bits; }

bool st_dtype_is_float(StDType dtype) {
  return dtype == StDType::F32 || dtype == StDType::F16 || dtype == StDType::BF16;
}

int64_t StTensorInfo::numel() const {
  return std::accumulate(shape.begin(), shape.end(), int64_t(1), [](int64_t a, int64_t b) { return a * b; });
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) fail_file(path, std::string("cannot open: ") + std::strerror(errno));
  try {
    struct stat st;
    if (::fstat(fd_, &st) != 0) fail_file(path, std::string("cannot stat: ") + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) fail_file(path, "not a regular file");
    size_ = uint64_t(st.st_size);
    if (size_ < 8) {
      fail_file(path, "truncated: the file is " + std::to_string(size_) +
                          " bytes, too short for the 8-byte header length");
    }
    void* map = ::mmap(nullptr, size_t(size_), PROT_READ, MAP_PRIVATE, fd_, 0);
    if (map == MAP_FAILED) fail_file(path, std::string("cannot memory-map: ") + std::strerror(errno));
    map_ = static_cast<const uint8_t*>(map);
    const uint64_t header_length = read_le64(map_);
    if (header_length > kMaxHeaderBytes) {
      fail_file(path, "bad header length " + std::to_string(header_length) + " (more than the " +
                          std::to_string(kMaxHeaderBytes) + "-byte limit; not a safetensors file?)");
    }
    if (header_length > size_ - 8) {
      fail_file(path, "truncated or bad header length: the header claims " + std::to_string(header_length) +
                          " bytes but only " + std::to_string(size_ - 8) + " follow the length field");
    }
    data_start_ = 8 + header_length;
    parse_header(header_length);
  } catch (...) {
    if (map_) ::munmap(const_cast<uint8_t*>(map_), size_t(size_));
    ::close(fd_);
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(const_cast<uint8_t*>(map_), size_t(size_));
  if (fd_ >= 0) ::close(fd_);
}

namespace {

std::vector<int64_t> parse_shape(const json::Value& value, const std::string& path, const std::string& name) {
  if (value.kind != json::Kind::Array) {
    fail_file(path, "tensor '" + name + "': 'shape' must be an array, found " + json::kind_name(value.kind));
  }
  std::vector<int64_t> shape;
  for (const json::Value& dim : value.array) {
    if (dim.kind != json::Kind::Integer || dim.integer < 0) {
      fail_file(path, "tensor '" + name + "': 'shape' must hold non-negative integers");
    }
    shape.push_back(dim.integer);
  }
  return shape;
}

std::pair<uint64_t, uint64_t> parse_offsets(const json::Value& value, const std::string& path,
                                            const std::string& name) {
  if (value.kind != json::Kind::Array || value.array.size() != 2 ||
      value.array[0].kind != json::Kind::Integer || value.array[1].kind != json::Kind::Integer ||
      value.array[0].integer < 0 || value.array[1].integer < 0) {
    fail_file(path, "tensor '" + name + "': 'data_offsets' must be [begin, end], two non-negative integers");
  }
  return {uint64_t(value.array[0].integer), uint64_t(value.array[1].integer)};
}

const json::Value& required(const json::Value& object, const char* field, const std::string& path,
                            const std::string& name) {
  const json::Value* value = object.find(field);
  if (!value) fail_file(path, "tensor '" + name + "': missing field '" + field + "'");
  return *value;
}

StTensorInfo parse_tensor(const std::string& name, const json::Value& value, const std::string& path) {
  if (value.kind != json::Kind::Object) {
    fail_file(path, "tensor '" + name + "': expected an object, found " + json::kind_name(value.kind));
  }
  const json::Value& dtype = required(value, "dtype", path, name);
  if (dtype.kind != json::Kind::String) fail_file(path, "tensor '" + name + "': 'dtype' must be a string");
  const std::optional<StDType> parsed = st_dtype_from_name(dtype.string);
  if (!parsed) {
    fail_file(path, "tensor '" + name + "': unknown dtype '" + dtype.string +
                        "' (safetensors dtypes are BF16, F16, F32, F64, I64, I32, ...)");
  }
  StTensorInfo info;
  info.name = name;
  info.dtype = *parsed;
  info.shape = parse_shape(required(value, "shape", path, name), path, name);
  std::tie(info.begin, info.end) = parse_offsets(required(value, "data_offsets", path, name), path, name);
  if (info.end < info.begin) {
    fail_file(path, "tensor '" + name + "': data_offsets [" + std::to_string(info.begin) + ", " +
                        std::to_string(info.end) + "] end before they begin");
  }
  const std::optional<uint64_t> expected = byte_size(info.shape, info.dtype);
  if (!expected) {
    fail_file(path, "tensor '" + name + "': shape " + shape_string(info.shape) + " of " + dtype.string +
                        " overflows or does not fill whole bytes");
  }
  if (*expected != info.bytes()) {
    fail_file(path, "tensor '" + name + "': shape " + shape_string(info.shape) + " of " + dtype.string + " needs " +
                        std::to_string(*expected) + " bytes but data_offsets [" + std::to_string(info.begin) +
                        ", " + std::to_string(info.end) + "] hold " + std::to_string(info.bytes()));
  }
  return info;
}

std::map<std::string, std::string> parse_metadata(const json::Value& value, const std::string& path) {
  std::map<std::string, std::string> metadata;
  if (value.kind == json::Kind::Null) return metadata;
  if (value.kind != json::Kind::Object) {
    fail_file(path, std::string("'__metadata__' must be an object of strings, found ") + json::kind_name(value.kind));
  }
  for (const auto& [key, item] : value.object) {
    if (item.kind != json::Kind::String) {
      fail_file(path, "'__metadata__' entry '" + key + "' must be a string, found " + json::kind_name(item.kind));
    }
    if (!metadata.emplace(key, item.string).second) fail_file(path, "'__metadata__' has duplicate key '" + key + "'");
  }
  return metadata;
}

}  // namespace

void SafetensorsFile::parse_header(uint64_t header_length) {
  const std::string_view text(reinterpret_cast<const char*>(map_ + 8), size_t(header_length));
  json::Value header;
  try {
    header = json::parse(text);
  } catch (const Error& e) {
    fail_file(path_, std::string("bad header: ") + e.what());
  }
  if (header.kind != json::Kind::Object) {
    fail_file(path_, std::string("bad header: expected a JSON object, found ") + json::kind_name(header.kind));
  }
  bool seen_metadata = false;
  for (const auto& [name, value] : header.object) {
    if (name == "__metadata__") {
      if (seen_metadata) fail_file(path_, "duplicate '__metadata__' entry");
      seen_metadata = true;
      metadata_ = parse_metadata(value, path_);
      continue;
    }
    if (index_.count(name)) fail_file(path_, "duplicate tensor name '" + name + "'");
    index_.emplace(name, tensors_.size());
    tensors_.push_back(parse_tensor(name, value, path_));
  }

  std::stable_sort(tensors_.begin(), tensors_.end(), [](const StTensorInfo& a, const StTensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const uint64_t data_size = size_ - data_start_;
  uint64_t covered = 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const StTensorInfo& t = tensors_[i];
    index_[t.name] = i;
    const std::string range = "[" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "]";
    if (t.end > data_size) {
      fail_file(path_, "tensor '" + t.name + "': data_offsets " + range + " run past the end of the data (" +
                           std::to_string(data_size) + " bytes; file truncated?)");
    }
    if (t.begin < covered) {
      fail_file(path_, "tensor '" + t.name + "': data_offsets " + range + " overlap tensor '" + tensors_[i - 1].name +
                           "' (which ends at " + std::to_string(covered) + ")");
    }
    if (t.begin > covered) {
      fail_file(path_, "tensor '" + t.name + "': data_offsets " + range + " leave a gap of " +
                           std::to_string(t.begin - covered) + " bytes before it");
    }
    covered = t.end;
  }
  if (covered != data_size) {
    fail_file(path_, "the tensors cover " + std::to_string(covered) + " bytes of data but the file holds " +
                         std::to_string(data_size) + " (extra bytes at the end)");
  }
}

const StTensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const void* SafetensorsFile::data(const StTensorInfo& tensor) const { return map_ + data_start_ + tensor.begin; }

namespace {

// File-backed pages count in the process's RSS while they stay mapped, so without this a model
// load would peak at its weights plus the whole file (the steps bench saw ~225 MB extra on a
// 56M-parameter model; 14 GB on Mistral-7B). The mapping is read-only: a dropped page is read
// from the file again if the tensor is read again.
void release_pages(const void* begin, uint64_t bytes) {
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t first = (uintptr_t(begin) + page - 1) & ~(page - 1);
  const uintptr_t last = (uintptr_t(begin) + bytes) & ~(page - 1);
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

}  // namespace

void SafetensorsFile::read(const std::string& name, const std::vector<int64_t>& expected_shape, DType out_dtype,
                           void* out) const {
  const StTensorInfo* tensor = find(name);
  if (!tensor) fail_file(path_, "no tensor named '" + name + "'");
  if (tensor->shape != expected_shape) {
    fail_file(path_, "tensor '" + name + "' has shape " + shape_string(tensor->shape) + ", expected " +
                         shape_string(expected_shape));
  }
  if (!st_dtype_is_float(tensor->dtype)) {
    fail_file(path_, "tensor '" + name + "' has dtype " + st_dtype_name(tensor->dtype) +
                         ", which zephyr-native does not load (supported: BF16, F16, F32)");
  }
  convert_parallel(tensor->dtype, static_cast<const uint8_t*>(data(*tensor)), storage_of(out_dtype),
                   static_cast<uint8_t*>(out), size_t(tensor->numel()));
  release_pages(data(*tensor), tensor->bytes());
}

namespace {

std::string header_json(const std::vector<StTensorToWrite>& tensors, const std::map<std::string, std::string>& metadata,
                        const std::vector<uint64_t>& sizes) {
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!first) header += ',';
      first = false;
      json::append_quoted(header, key);
      header += ':';
      json::append_quoted(header, value);
    }
    header += '}';
  }
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (header.size() > 1) header += ',';
    json::append_quoted(header, tensors[i].name);
    header += ":{\"dtype\":\"";
    header += st_dtype_name(tensors[i].dtype);
    header += "\",\"shape\":[";
    for (size_t d = 0; d < tensors[i].shape.size(); ++d) {
      if (d) header += ',';
      header += std::to_string(tensors[i].shape[d]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + sizes[i]) + "]}";
    offset += sizes[i];
  }
  header += '}';
  // Pad to a multiple of 8 so every tensor's data starts 8-byte aligned in the file.
  header.append((8 - header.size() % 8) % 8, ' ');
  return header;
}

// Streams a tensor in `source` dtype to the file in `dtype`, converting in bounded chunks.
void write_converted(AtomicFile& file, const StTensorToWrite& tensor, StDType source) {
  const size_t from_size = size_t(st_dtype_bits(source) / 8);
  const size_t to_size = size_t(st_dtype_bits(tensor.dtype) / 8);
  const size_t count = size_t(byte_size(tensor.shape, source).value() / from_size);
  const size_t chunk = size_t(1) << 20;
  std::vector<uint8_t> buffer(std::min(count, chunk) * to_size);
  const auto* src = static_cast<const uint8_t*>(tensor.data);
  for (size_t begin = 0; begin < count; begin += chunk) {
    const size_t n = std::min(chunk, count - begin);
    convert_parallel(source, src + begin * from_size, tensor.dtype, buffer.data(), n);
    file.write(buffer.data(), n * to_size);
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<StTensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<uint64_t> sizes;
  std::map<std::string, size_t> seen;
  for (const StTensorToWrite& t : tensors) {
    const std::string where = "cannot write '" + path + "': tensor '" + t.name + "'";
    ZN_CHECK(t.name != "__metadata__", where, ": the name is reserved for the file's metadata");
    ZN_CHECK(seen.emplace(t.name, sizes.size()).second, where, ": duplicate tensor name");
    const std::optional<uint64_t> size = byte_size(t.shape, t.dtype);
    ZN_CHECK(size.has_value(), where, ": bad shape ", shape_string(t.shape), " for dtype ", st_dtype_name(t.dtype));
    if (t.source && *t.source != t.dtype) {
      ZN_CHECK(st_dtype_is_float(*t.source) && st_dtype_is_float(t.dtype), where, ": cannot convert ",
               st_dtype_name(*t.source), " to ", st_dtype_name(t.dtype), " (only between F32, F16 and BF16)");
    }
    ZN_CHECK(t.data != nullptr || *size == 0, where, ": no data");
    sizes.push_back(*size);
  }
  const std::string header = header_json(tensors, metadata, sizes);
  AtomicFile file(path);
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = uint8_t(uint64_t(header.size()) >> (8 * i));
  file.write(length, 8);
  file.write(header.data(), header.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const StTensorToWrite& t = tensors[i];
    if (t.source && *t.source != t.dtype) write_converted(file, t, *t.source);
    else file.write(t.data, size_t(sizes[i]));
  }
  file.commit();
}

}  // namespace zn
