// A file that appears at its path complete or not at all: bytes go to a temporary file in the
// same folder (so rename stays on one filesystem), commit() fsyncs it, renames it over the
// target and fsyncs the folder so the rename itself survives a crash. An AtomicFile destroyed
// without commit() removes its temporary file. Errors are zn::Error naming the target path.
#pragma once
#include <cstddef>
#include <string>

namespace zn {

class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* bytes, size_t count);
  void commit();

  const std::string& path() const { return path_; }

 private:
  [[noreturn]] void fail_errno(const char* what) const;

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace zn
