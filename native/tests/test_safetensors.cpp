// safetensors: round trips, dtype conversions against independent references, the files the
// reference reader accepts, and every corruption giving an error that names the file, the
// tensor and the problem (never a crash).
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/f16.h"
#include "harness.h"
#include "model/safetensors.h"

using namespace zn;

namespace {

// A fresh folder per test under $TMPDIR (removed at the end of the test).
struct TempDir {
  std::string path;
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base ? base : "/tmp") + "/zn-safetensors-XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    ZN_CHECK(mkdtemp(buffer.data()) != nullptr, "mkdtemp failed");
    path = buffer.data();
  }
  ~TempDir() {
    for (const std::string& name : entries()) ::unlink((path + "/" + name).c_str());
    ::rmdir(path.c_str());
  }
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    if (DIR* dir = ::opendir(path.c_str())) {
      while (dirent* e = ::readdir(dir)) {
        if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) names.push_back(e->d_name);
      }
      ::closedir(dir);
    }
    return names;
  }
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[size_t(i)] = char(uint8_t(v >> (8 * i)));
  return s;
}

// A file from a literal header and `data_bytes` bytes of data.
std::string make_file(const std::string& header, size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\x11');
}

std::string open_error(const std::string& path) {
  try {
    SafetensorsFile file(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_open_error(const TempDir& dir, const std::string& bytes, const std::string& expected) {
  const std::string path = dir.path + "/bad.safetensors";
  write_bytes(path, bytes);
  const std::string message = open_error(path);
  EXPECT(!message.empty(), "expected an error containing '", expected, "', the file opened");
  EXPECT(message.find("safetensors file '" + path + "'") == 0, "message does not name the file: ", message);
  EXPECT(message.find(expected) != std::string::npos, "expected '", expected, "' in: ", message);
  EXPECT(message.find('\n') == std::string::npos, "not one line: ", message);
}

void expect_opens(const TempDir& dir, const std::string& bytes) {
  const std::string path = dir.path + "/ok.safetensors";
  write_bytes(path, bytes);
  const std::string message = open_error(path);
  EXPECT(message.empty(), message);
}

template <typename T>
std::vector<T> from_bits(const std::vector<uint16_t>& bits) {
  std::vector<T> out(bits.size());
  std::memcpy(out.data(), bits.data(), bits.size() * 2);
  return out;
}

const std::string kTensorA = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

}  // namespace

ZN_TEST("safetensors.round_trip_with_layout_and_metadata") {
  TempDir dir;
  const std::string path = dir.path + "/model.safetensors";
  const std::vector<float> w = test::random_f32(6);
  const std::vector<bf16> b = test::to_bf16(test::random_f32(4));
  const std::vector<uint16_t> h = {0x3c00, 0xc000, 0x7bff, 0x0001};
  write_safetensors(path,
                    {{"layer.w", StDType::F32, {2, 3}, w.data()},
                     {"b", StDType::BF16, {4}, b.data()},
                     {"h", StDType::F16, {2, 2}, h.data()},
                     {"empty", StDType::F32, {0, 5}, nullptr},
                     {"scalar", StDType::F32, {}, w.data()}},
                    {{"format", "pt"}});

  // The layout the reference writer produces: header padded with spaces to 8 bytes, tensors
  // back to back in the order given.
  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[size_t(i)]);
  EXPECT(n % 8 == 0 && bytes.size() == 8 + n + 24 + 8 + 8 + 0 + 4, "n=", n, " size=", bytes.size());
  const std::string header = bytes.substr(8, n);
  EXPECT(header.rfind("{\"__metadata__\":{\"format\":\"pt\"},\"layer.w\":{\"dtype\":\"F32\",\"shape\":[2,3],"
                      "\"data_offsets\":[0,24]},",
                      0) == 0,
         header);
  EXPECT(header.find_last_not_of(' ') + 1 > n - 8, "padding longer than 7 bytes");
  EXPECT(std::memcmp(bytes.data() + 8 + n, w.data(), 24) == 0);

  SafetensorsFile file(path);
  EXPECT(file.metadata().size() == 1 && file.metadata().at("format") == "pt");
  EXPECT(file.tensors().size() == 5);
  const char* order[] = {"layer.w", "b", "h", "empty", "scalar"};
  for (size_t i = 0; i < 5; ++i) EXPECT(file.tensors()[i].name == order[i], file.tensors()[i].name);
  const StTensorInfo* info = file.find("h");
  EXPECT(info && info->dtype == StDType::F16 && info->shape == std::vector<int64_t>({2, 2}) && info->begin == 32 &&
         info->end == 40);
  EXPECT(file.find("nope") == nullptr);
  EXPECT(file.find("scalar")->numel() == 1 && file.find("empty")->numel() == 0);

  std::vector<float> w_back(6);
  file.read("layer.w", {2, 3}, DType::F32, w_back.data());
  EXPECT(std::memcmp(w_back.data(), w.data(), 24) == 0);
  std::vector<bf16> b_back(4);
  file.read("b", {4}, DType::BF16, b_back.data());
  EXPECT(std::memcmp(b_back.data(), b.data(), 8) == 0);
  std::vector<float> empty_back;
  file.read("empty", {0, 5}, DType::F32, empty_back.data());
  float scalar = 0;
  file.read("scalar", {}, DType::F32, &scalar);
  EXPECT(scalar == w[0]);
}

ZN_TEST("safetensors.converts_on_read") {
  TempDir dir;
  const std::string path = dir.path + "/mixed.safetensors";
  // f32 values whose bf16 rounding is known: exact, a tie to even (down), a tie to even (up),
  // just above a tie, a negative value, and infinity.
  const std::vector<float> f = {1.5f, 1.0f + 1.0f / 256, 1.0f + 3.0f / 256, 1.0f + 1.0f / 256 + 1.0f / 65536,
                                -2.25f, INFINITY};
  const std::vector<uint16_t> bf16_expected = {0x3fc0, 0x3f80, 0x3f82, 0x3f81, 0xc010, 0x7f80};
  // bf16 bits and their exact values.
  const std::vector<uint16_t> b = {0x3f80, 0xc2f7, 0x0001};
  const std::vector<float> b_values = {1.0f, -123.5f, std::ldexp(1.0f, -133)};
  // f16 bits and their exact values (normal, negative, largest, smallest subnormal, largest subnormal).
  const std::vector<uint16_t> h = {0x3c00, 0xc0a0, 0x7bff, 0x0001, 0x03ff};
  const std::vector<float> h_values = {1.0f, -2.3125f, 65504.0f, std::ldexp(1.0f, -24), 1023 * std::ldexp(1.0f, -24)};
  write_safetensors(path, {{"f", StDType::F32, {6}, f.data()}, {"b", StDType::BF16, {3}, b.data()},
                           {"h", StDType::F16, {5}, h.data()}},
                    {});
  SafetensorsFile file(path);

  std::vector<uint16_t> out16(6);
  file.read("f", {6}, DType::BF16, out16.data());
  EXPECT(out16 == bf16_expected);
  std::vector<float> out32(3);
  file.read("b", {3}, DType::F32, out32.data());
  EXPECT(out32 == b_values);
  out32.resize(5);
  file.read("h", {5}, DType::F32, out32.data());
  EXPECT(out32 == h_values);
  out16.resize(5);
  file.read("h", {5}, DType::BF16, out16.data());
  // 1, -2.3125 and 2^-24 are exact in bf16; 65504 = 0x477fe0 rounds up to 65536 (0x4780);
  // 1023 * 2^-24 = 0x387fc000 rounds up to 0x3880.
  EXPECT(out16 == std::vector<uint16_t>({0x3f80, 0xc014, 0x4780, 0x3380, 0x3880}));
}

ZN_TEST("safetensors.f16_conversions_match_float64_reference") {
  // Every half bit pattern widens to the value its fields denote, computed in float64.
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const int sign = (bits >> 15) ? -1 : 1;
    const int exponent = int(bits >> 10) & 31;
    const int mantissa = int(bits & 1023);
    const float got = f16_bits_to_f32(uint16_t(bits));
    if (exponent == 31) {
      EXPECT(mantissa ? std::isnan(got) : got == sign * INFINITY, "bits ", bits);
      continue;
    }
    const double value = exponent == 0 ? sign * std::ldexp(double(mantissa), -24)
                                       : sign * std::ldexp(1.0 + mantissa / 1024.0, exponent - 15);
    EXPECT(double(got) == value && std::signbit(got) == (sign < 0), "bits ", bits);
    // Narrowing back gives the same bits.
    EXPECT(f32_to_f16_bits(got) == bits, "bits ", bits);
  }
  // Midpoints between neighbours round to the even one; a hair off the midpoint rounds to the
  // nearer one. Neighbours of the largest finite half: the midpoint overflows to infinity.
  for (uint32_t bits = 0; bits < 0x7bff; ++bits) {
    const double a = f16_bits_to_f32(uint16_t(bits));
    const double b = f16_bits_to_f32(uint16_t(bits + 1));
    const float mid = float((a + b) / 2);
    EXPECT(double(mid) == (a + b) / 2, "midpoint not exact in f32");
    const uint16_t even = (bits & 1) ? uint16_t(bits + 1) : uint16_t(bits);
    EXPECT(f32_to_f16_bits(mid) == even, "midpoint after bits ", bits);
    EXPECT(f32_to_f16_bits(std::nextafter(mid, 0.0f)) == bits, "below midpoint after bits ", bits);
    EXPECT(f32_to_f16_bits(std::nextafter(mid, INFINITY)) == bits + 1, "above midpoint after bits ", bits);
    EXPECT(f32_to_f16_bits(-mid) == (even | 0x8000), "negative midpoint after bits ", bits);
  }
  EXPECT(f32_to_f16_bits(65519.996f) == 0x7bff);
  EXPECT(f32_to_f16_bits(65520.0f) == 0x7c00);
  EXPECT(f32_to_f16_bits(1e30f) == 0x7c00 && f32_to_f16_bits(-INFINITY) == 0xfc00);
  EXPECT((f32_to_f16_bits(std::nanf("")) & 0x7fff) > 0x7c00);
  EXPECT(f32_to_f16_bits(std::ldexp(1.0f, -26)) == 0);  // below half the smallest subnormal
  EXPECT(f32_to_f16_bits(-0.0f) == 0x8000);
}

ZN_TEST("safetensors.converts_on_write") {
  TempDir dir;
  const std::string path = dir.path + "/converted.safetensors";
  // More than one conversion chunk (2^20 elements) so the chunk boundary is exercised.
  const size_t n = (size_t(1) << 20) + 3;
  std::vector<float> master = test::random_f32(n);
  master[1] = 1.0f + 1.0f / 256;  // a tie
  write_safetensors(path, {{"as_bf16", StDType::BF16, {int64_t(n)}, master.data(), StDType::F32},
                           {"as_f16", StDType::F16, {int64_t(n)}, master.data(), StDType::F32},
                           {"as_f32", StDType::F32, {int64_t(n)}, master.data(), StDType::F32}},
                    {});
  SafetensorsFile file(path);
  const auto* as_bf16 = static_cast<const uint8_t*>(file.data(*file.find("as_bf16")));
  const auto* as_f16 = static_cast<const uint8_t*>(file.data(*file.find("as_f16")));
  for (size_t i = 0; i < n; ++i) {
    uint16_t stored;
    std::memcpy(&stored, as_bf16 + 2 * i, 2);
    EXPECT(stored == f32_to_bf16(master[i]).bits, "bf16 element ", i);
    std::memcpy(&stored, as_f16 + 2 * i, 2);
    EXPECT(stored == f32_to_f16_bits(master[i]), "f16 element ", i);
  }
  EXPECT(std::memcmp(file.data(*file.find("as_f32")), master.data(), n * 4) == 0);
}

ZN_TEST("safetensors.accepts_what_the_reference_reader_accepts") {
  TempDir dir;
  // Whitespace around the JSON, unknown fields in an entry, null metadata, no tensors at all,
  // a zero-size tensor sharing its offset, entries listed out of offset order.
  expect_opens(dir, make_file(" \n{" + kTensorA + "}  \t", 8));
  expect_opens(dir, make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":[1]}})", 8));
  expect_opens(dir, make_file("{\"__metadata__\":null," + kTensorA + "}", 8));
  expect_opens(dir, make_file("{}", 0));
  expect_opens(dir, make_file(R"({"b":{"dtype":"F16","shape":[1],"data_offsets":[8,10]},)"
                              R"("z":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},)" + kTensorA + "}",
                              10));
  // Sub-byte dtypes are valid when they fill whole bytes.
  expect_opens(dir, make_file(R"({"q":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}})", 3));
  SafetensorsFile file(dir.path + "/ok.safetensors");
  EXPECT(file.find("q")->dtype == StDType::F4);
}

ZN_TEST("safetensors.truncated_files") {
  TempDir dir;
  expect_open_error(dir, "", "truncated: the file is 0 bytes");
  expect_open_error(dir, std::string("\x10\0\0", 3), "truncated: the file is 3 bytes");
  const std::string good = make_file("{" + kTensorA + "}", 8);
  expect_open_error(dir, good.substr(0, 20), "truncated or bad header length");
  expect_open_error(dir, good.substr(0, good.size() - 3), "tensor 'a': data_offsets [0, 8] run past the end");
}

ZN_TEST("safetensors.bad_header_length") {
  TempDir dir;
  expect_open_error(dir, le64(uint64_t(1) << 63) + "{}", "bad header length 9223372036854775808");
  expect_open_error(dir, le64(1000) + "{}", "header claims 1000 bytes but only 2 follow");
  expect_open_error(dir, le64(100'000'001) + "{}", "more than the 100000000-byte limit");
}

ZN_TEST("safetensors.bad_json") {
  TempDir dir;
  expect_open_error(dir, make_file("{\"a\":", 0), "bad header: invalid JSON at byte 5");
  expect_open_error(dir, make_file("[]", 0), "bad header: expected a JSON object, found an array");
  expect_open_error(dir, make_file("{" + kTensorA + std::string("}\0\0", 3), 8), "trailing characters");
  expect_open_error(dir, make_file("{\"a\xff\":1}", 0), "invalid UTF-8");
  expect_open_error(dir, make_file(std::string(100000, '['), 0), "nesting deeper than");
  expect_open_error(dir, make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}})", 8),
                    "fraction or exponent");
}

ZN_TEST("safetensors.bad_entries") {
  TempDir dir;
  expect_open_error(dir, make_file(R"({"a":{"dtype":"float32","shape":[2],"data_offsets":[0,8]}})", 8),
                    "tensor 'a': unknown dtype 'float32'");
  expect_open_error(dir, make_file(R"({"a":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", 8),
                    "tensor 'a': 'dtype' must be a string");
  expect_open_error(dir, make_file(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8),
                    "tensor 'a': missing field 'dtype'");
  expect_open_error(dir, make_file(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", 8),
                    "tensor 'a': missing field 'shape'");
  expect_open_error(dir, make_file(R"({"a":{"dtype":"F32","shape":[2]}})", 8),
                    "tensor 'a': missing field 'data_offsets'");
  expect_open_error(dir, make_file(R"({"a":[1]})", 0), "tensor 'a': expected an object, found an array");
  expect_open_error(dir, make_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
                    "tensor 'a': 'shape' must hold non-negative integers");
  expect_open_error(dir, make_file(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8),
                    "tensor 'a': 'shape' must be an array");
  expect_open_error(dir, make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})", 8),
                    "tensor 'a': 'data_offsets' must be [begin, end]");
  expect_open_error(dir, make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
                    "tensor 'a': data_offsets [8, 0] end before they begin");
  expect_open_error(dir, make_file("{\"__metadata__\":{\"format\":1}," + kTensorA + "}", 8),
                    "'__metadata__' entry 'format' must be a string, found an integer");
  expect_open_error(dir, make_file("{\"__metadata__\":\"pt\"," + kTensorA + "}", 8),
                    "'__metadata__' must be an object of strings");
}

ZN_TEST("safetensors.shape_size_mismatch") {
  TempDir dir;
  expect_open_error(dir, make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
                    "tensor 'a': shape [3] of F32 needs 12 bytes but data_offsets [0, 8] hold 8");
  expect_open_error(dir, make_file(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,8]}})", 8),
                    "tensor 'a': shape [2] of BF16 needs 4 bytes");
  expect_open_error(dir,
                    make_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
                    "tensor 'a': shape [4294967296, 4294967296] of F32 overflows");
  expect_open_error(dir, make_file(R"({"q":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", 2),
                    "does not fill whole bytes");
}

ZN_TEST("safetensors.out_of_bounds_overlap_gap_and_leftover") {
  TempDir dir;
  expect_open_error(dir, make_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
                    "tensor 'a': data_offsets [0, 16] run past the end of the data (8 bytes");
  expect_open_error(dir,
                    make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                              12),
                    "tensor 'b': data_offsets [4, 12] overlap tensor 'a' (which ends at 8)");
  expect_open_error(dir,
                    make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                              8),
                    "overlap tensor 'a'");
  expect_open_error(dir,
                    make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                              20),
                    "tensor 'b': data_offsets [12, 20] leave a gap of 4 bytes");
  expect_open_error(dir, make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
                    "leave a gap of 4 bytes");
  expect_open_error(dir, make_file("{" + kTensorA + "}", 9), "cover 8 bytes of data but the file holds 9");
}

ZN_TEST("safetensors.duplicate_names") {
  TempDir dir;
  expect_open_error(dir,
                    make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                              R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                              16),
                    "duplicate tensor name 'a'");
  expect_open_error(dir, make_file("{\"__metadata__\":{},\"__metadata__\":{}}", 0), "duplicate '__metadata__'");
}

ZN_TEST("safetensors.read_errors_name_the_tensor") {
  TempDir dir;
  const std::string path = dir.path + "/m.safetensors";
  write_bytes(path, make_file(R"({"d":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},)"
                              R"("i":{"dtype":"I64","shape":[1],"data_offsets":[8,16]},)"
                              R"("w":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]}})",
                              32));
  SafetensorsFile file(path);
  const auto read_error = [&](const std::string& name, std::vector<int64_t> shape) {
    std::vector<float> out(8);
    try {
      file.read(name, shape, DType::F32, out.data());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  const std::string prefix = "safetensors file '" + path + "': ";
  EXPECT(read_error("d", {1}) == prefix + "tensor 'd' has dtype F64, which zephyr-native does not load "
                                          "(supported: BF16, F16, F32)",
         read_error("d", {1}));
  EXPECT(read_error("i", {1}).find("tensor 'i' has dtype I64") != std::string::npos);
  EXPECT(read_error("w", {4}) == prefix + "tensor 'w' has shape [2, 2], expected [4]", read_error("w", {4}));
  EXPECT(read_error("x", {1}) == prefix + "no tensor named 'x'");
  EXPECT(read_error("w", {2, 2}).empty());
}

ZN_TEST("safetensors.other_open_errors") {
  TempDir dir;
  EXPECT(open_error(dir.path + "/missing.safetensors").find("cannot open: No such file") != std::string::npos);
  EXPECT(open_error(dir.path).find("not a regular file") != std::string::npos, open_error(dir.path));
}

ZN_TEST("safetensors.writes_are_atomic") {
  TempDir dir;
  const std::string path = dir.path + "/model.safetensors";
  const std::vector<float> first = {1, 2};
  const std::vector<float> second = {3, 4, 5};
  write_safetensors(path, {{"w", StDType::F32, {2}, first.data()}}, {});
  write_safetensors(path, {{"w", StDType::F32, {3}, second.data()}}, {});
  EXPECT(SafetensorsFile(path).find("w")->shape == std::vector<int64_t>({3}));
  // A rejected write leaves the old file as it was and no temporary file behind.
  const std::string before = read_bytes(path);
  const auto write_error = [&](const std::vector<StTensorToWrite>& tensors) {
    try {
      write_safetensors(path, tensors, {});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT(write_error({{"w", StDType::F32, {2}, first.data()}, {"w", StDType::F32, {2}, first.data()}})
             .find("tensor 'w': duplicate tensor name") != std::string::npos);
  EXPECT(write_error({{"__metadata__", StDType::F32, {2}, first.data()}}).find("reserved") != std::string::npos);
  EXPECT(write_error({{"n", StDType::F32, {-1}, first.data()}}).find("bad shape [-1]") != std::string::npos);
  EXPECT(write_error({{"i", StDType::I32, {2}, first.data(), StDType::F32}}).find("cannot convert F32 to I32") !=
         std::string::npos);
  EXPECT(read_bytes(path) == before);
  EXPECT(dir.entries() == std::vector<std::string>({"model.safetensors"}));
  const std::string missing = dir.path + "/no-such-dir/model.safetensors";
  const std::string message = [&] {
    try {
      write_safetensors(missing, {{"w", StDType::F32, {2}, first.data()}}, {});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  }();
  EXPECT(message.find("cannot write '" + missing + "'") == 0, message);
}

ZN_TEST("safetensors.a_tensor_reads_the_same_after_its_pages_are_released") {
  // read() hands the tensor's whole file pages back to the OS after converting it; a second read
  // of the same open file must fault them in from the file again, unchanged. Several pages, not
  // page-aligned (a small tensor first), so the partly shared first and last pages stay mapped.
  TempDir dir;
  const std::string path = dir.path + "/pages.safetensors";
  const std::vector<float> small = test::random_f32(3);
  const std::vector<float> big = test::random_f32(5 * 4096 + 7);
  write_safetensors(path, {{"small", StDType::F32, {3}, small.data()}, {"big", StDType::F32, {int64_t(big.size())}, big.data()}}, {});
  SafetensorsFile file(path);
  for (int round = 0; round < 2; ++round) {
    std::vector<float> back(big.size());
    file.read("big", {int64_t(big.size())}, DType::F32, back.data());
    EXPECT(std::memcmp(back.data(), big.data(), big.size() * 4) == 0, "round ", round);
    float small_back[3];
    file.read("small", {3}, DType::F32, small_back);
    EXPECT(std::memcmp(small_back, small.data(), 12) == 0, "round ", round);
  }
}
