// Errors raised by the native core. Every failure that user input can reach throws zn::Error
// with a message naming the operation and the bad value; the addon turns it into a JS Error.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace zn {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream message;
  (message << ... << parts);
  throw Error(message.str());
}

}  // namespace zn

// ZN_CHECK(cond, "gemm: K must be positive, got ", k);
#define ZN_CHECK(cond, ...)            \
  do {                                 \
    if (!(cond)) ::zn::fail(__VA_ARGS__); \
  } while (0)
