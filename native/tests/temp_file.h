// A temporary file path for tests, removed at the end of the scope: a unique name under $TMPDIR
// (or /tmp) with the given suffix (e.g. ".safetensors"); the file itself is not created.
#pragma once
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "core/errors.h"

namespace zn::test {

struct TempFile {
  std::string path;
  explicit TempFile(const char* suffix) {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base ? base : "/tmp") + "/zn-test-XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    const int fd = mkstemp(buffer.data());
    ZN_CHECK(fd >= 0, "mkstemp failed");
    ::close(fd);
    ::unlink(buffer.data());
    path = std::string(buffer.data()) + suffix;
  }
  ~TempFile() { ::unlink(path.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
};

}  // namespace zn::test
