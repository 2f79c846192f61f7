// The strict JSON parser used for file headers: what it accepts, what it decodes, and that
// every malformed input is an error with a byte offset, never a crash.
#include <string>

#include "core/json.h"
#include "harness.h"

using namespace zn;

namespace {

std::string error_of(const std::string& text) {
  try {
    json::parse(text);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

ZN_TEST("json.parses_every_kind") {
  const json::Value v = json::parse(
      " {\"a\": [1, -2, 0, 9223372036854775807, -9223372036854775808], \"b\": {\"c\": true, \"d\": false},"
      " \"e\": null, \"f\": \"x\", \"g\": [], \"h\": {}}\n ");
  EXPECT(v.kind == json::Kind::Object && v.object.size() == 6);
  const json::Value* a = v.find("a");
  EXPECT(a && a->kind == json::Kind::Array && a->array.size() == 5);
  EXPECT(a->array[0].integer == 1 && a->array[1].integer == -2 && a->array[2].integer == 0);
  EXPECT(a->array[3].integer == INT64_MAX && a->array[4].integer == INT64_MIN);
  EXPECT(v.find("b")->find("c")->boolean && !v.find("b")->find("d")->boolean);
  EXPECT(v.find("b")->find("d")->kind == json::Kind::Bool);
  EXPECT(v.find("e")->kind == json::Kind::Null);
  EXPECT(v.find("f")->string == "x");
  EXPECT(v.find("g")->array.empty() && v.find("h")->object.empty());
  EXPECT(v.find("missing") == nullptr);
}

ZN_TEST("json.keeps_duplicate_keys_in_order") {
  const json::Value v = json::parse("{\"k\": 1, \"j\": 2, \"k\": 3}");
  EXPECT(v.object.size() == 3 && v.object[0].first == "k" && v.object[2].first == "k");
  EXPECT(v.find("k")->integer == 1);
}

ZN_TEST("json.decodes_escapes") {
  const json::Value v = json::parse(R"(["\"\\\/\b\f\n\r\t", "\u0041\u00e9\u20ac", "\ud83d\ude00", "é€😀"])");
  EXPECT(v.array[0].string == "\"\\/\b\f\n\r\t");
  EXPECT(v.array[1].string == "A\xC3\xA9\xE2\x82\xAC");
  EXPECT(v.array[2].string == "\xF0\x9F\x98\x80");
  EXPECT(v.array[3].string == "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
}

ZN_TEST("json.quoting_round_trips") {
  const std::string original = std::string("a\"b\\c\nd\x01\x1f\tz\xC3\xA9", 13);
  std::string quoted;
  json::append_quoted(quoted, original);
  EXPECT(quoted == "\"a\\\"b\\\\c\\nd\\u0001\\u001f\\tz\xC3\xA9\"", quoted);
  EXPECT(json::parse(quoted).string == original);
}

ZN_TEST("json.rejects_malformed_input_with_an_offset") {
  const std::pair<const char*, const char*> cases[] = {
      {"", "unexpected end of input"},
      {"{", "expected a string key"},
      {"{\"a\" 1}", "expected ':'"},
      {"{\"a\": 1,}", "expected a string key"},
      {"[1, 2", "expected ']'"},
      {"[1,]", "unexpected character"},
      {"{\"a\": 1} x", "trailing characters"},
      {"01", "leading zeros"},
      {"1.5", "fraction or exponent"},
      {"1e3", "fraction or exponent"},
      {"-", "expected a digit"},
      {"9223372036854775808", "does not fit in 64 bits"},
      {"-9223372036854775809", "does not fit in 64 bits"},
      {"tru", "unexpected character"},
      {"nul", "unexpected character"},
      {"\"abc", "unterminated string"},
      {"\"a\nb\"", "control character"},
      {"\"\\x\"", "invalid escape"},
      {"\"\\u12xx\"", "invalid hex digit"},
      {"\"\\u12", "truncated \\u escape"},
      {"\"\\ud800\"", "high surrogate not followed by a low surrogate"},
      {"\"\\ud800\\u0041\"", "high surrogate not followed by a low surrogate"},
      {"\"\\udc00\"", "lone low surrogate"},
      {"\"\xff\"", "invalid UTF-8 byte"},
      {"\"\xc3\"", "invalid UTF-8 continuation byte"},
      {"\"\xc0\x80\"", "invalid UTF-8 sequence"},        // overlong NUL
      {"\"\xed\xa0\x80\"", "invalid UTF-8 sequence"},    // encoded surrogate
      {"\"\xf4\x90\x80\x80\"", "invalid UTF-8 sequence"},  // above U+10FFFF
      {"\"\xe2\x82", "truncated UTF-8 sequence"},
      {"'a'", "unexpected character"},
  };
  for (const auto& [text, expected] : cases) {
    const std::string message = error_of(text);
    EXPECT(message.find("invalid JSON at byte ") == 0, "for input <", text, ">: got '", message, "'");
    EXPECT(message.find(expected) != std::string::npos, "for input <", text, ">: got '", message, "'");
  }
  EXPECT(error_of("[1, 2, x]").find("at byte 7") != std::string::npos, error_of("[1, 2, x]"));
}

ZN_TEST("json.limits_nesting_depth") {
  EXPECT(json::parse(std::string(json::kMaxDepth, '[') + std::string(json::kMaxDepth, ']')).kind == json::Kind::Array);
  const std::string deep(200000, '[');
  EXPECT(error_of(deep).find("nesting deeper than") != std::string::npos);
}
