#include "core/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "core/errors.h"

namespace zn {

namespace {

std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  static std::atomic<unsigned> counter{0};
  // A hidden name next to the target: the same filesystem, and never mistaken for the file.
  temp_path_ = parent_dir(path) + "/." + base_name(path) + ".tmp-" + std::to_string(getpid()) + "-" +
               std::to_string(counter.fetch_add(1));
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) fail_errno("cannot create a temporary file");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void AtomicFile::fail_errno(const char* what) const {
  fail("cannot write '", path_, "': ", what, " (", std::strerror(errno), ")");
}

void AtomicFile::write(const void* bytes, size_t count) {
  ZN_CHECK(fd_ >= 0, "cannot write '", path_, "': the file is already committed");
  const char* p = static_cast<const char*>(bytes);
  while (count > 0) {
    // Linux writes at most ~2 GiB per call; ask for 1 GiB at a time.
    const size_t chunk = count < (size_t(1) << 30) ? count : (size_t(1) << 30);
    const ssize_t written = ::write(fd_, p, chunk);
    if (written < 0) {
      if (errno == EINTR) continue;
      fail_errno("write failed");
    }
    p += written;
    count -= size_t(written);
  }
}

void AtomicFile::commit() {
  ZN_CHECK(fd_ >= 0, "cannot write '", path_, "': the file is already committed");
  if (::fsync(fd_) != 0) fail_errno("fsync failed");
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail_errno("close failed");
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) fail_errno("rename failed");
  committed_ = true;
  const int dir = ::open(parent_dir(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) fail_errno("cannot open the folder to fsync it");
  const int synced = ::fsync(dir);
  ::close(dir);
  if (synced != 0) fail_errno("fsync of the folder failed");
}

}  // namespace zn
