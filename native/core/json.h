// A small strict JSON parser (RFC 8259) for the headers of files we read, such as safetensors.
// Objects keep their members in file order, duplicates included, so the caller decides what a
// repeated key means. Numbers must be integers that fit in int64: file headers hold sizes and
// offsets, and a fraction or exponent there is an error, not a value to round. Strings are
// checked to be valid UTF-8 and \uXXXX escapes (surrogate pairs included) are decoded to UTF-8.
// Errors are zn::Error with the byte offset of the problem.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace zn::json {

enum class Kind { Null, Bool, Integer, String, Array, Object };

const char* kind_name(Kind kind);

struct Value {
  Kind kind = Kind::Null;
  bool boolean = false;
  int64_t integer = 0;
  std::string string;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;

  // The first member named `key`, or nullptr (objects only).
  const Value* find(std::string_view key) const;
};

// Parses a whole document; whitespace may surround the value, nothing else may follow it.
// Nesting deeper than kMaxDepth is an error (so a hostile file cannot exhaust the stack).
constexpr int kMaxDepth = 128;
Value parse(std::string_view text);

// Appends `text` as a JSON string literal (quotes included) to `out`.
void append_quoted(std::string& out, std::string_view text);

}  // namespace zn::json
