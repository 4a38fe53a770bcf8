#include "core/file.h"

#include "core/fault.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace meridian {

namespace {
std::string errno_text() { return std::strerror(errno); }
}  // namespace

Result<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::error(path + ": cannot open (" + errno_text() + ")", "check that the file exists and is readable");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return Status::error(path + ": read failed");
  return ss.str();
}

Status fsync_dir(const std::string& dir) {
  int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return Status::error(dir + ": cannot open directory (" + errno_text() + ")");
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return Status::error(dir + ": fsync failed (" + errno_text() + ")");
  return Status::ok();
}

Status write_file_atomic(const std::string& path, std::string_view data) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::error(tmp + ": cannot create (" + errno_text() + ")", "check that the directory exists and is writable");
  size_t written = 0;
  while (written < data.size()) {
    ssize_t n = ::write(fd, data.data() + written, data.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::string err = errno_text();
      ::close(fd);
      ::unlink(tmp.c_str());
      return Status::error(tmp + ": write failed (" + err + ")", "check free disk space");
    }
    written += static_cast<size_t>(n);
  }
  MERIDIAN_FAULT_POINT("file.written");
  if (::fsync(fd) != 0) {
    std::string err = errno_text();
    ::close(fd);
    ::unlink(tmp.c_str());
    return Status::error(tmp + ": fsync failed (" + err + ")", "check free disk space and the file system");
  }
  ::close(fd);
  MERIDIAN_FAULT_POINT("file.synced");
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Status::error(path + ": rename failed (" + errno_text() + ")");
  return fsync_dir(std::filesystem::path(path).parent_path().string());
}

Result<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::error(path + ": cannot open (" + errno_text() + ")", "check that the file exists and is readable");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return Status::error(path + ": cannot stat (" + errno_text() + ")");
  }
  MappedFile mf;
  mf.path_ = path;
  mf.size_ = static_cast<size_t>(st.st_size);
  if (mf.size_ > 0) {
    void* p = ::mmap(nullptr, mf.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      return Status::error(path + ": mmap failed (" + errno_text() + ")");
    }
    mf.data_ = static_cast<const unsigned char*>(p);
  }
  ::close(fd);
  return mf;
}

MappedFile::MappedFile(MappedFile&& other) noexcept { *this = std::move(other); }

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_) ::munmap(const_cast<unsigned char*>(data_), size_);
    data_ = other.data_;
    size_ = other.size_;
    path_ = std::move(other.path_);
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<unsigned char*>(data_), size_);
}

}  // namespace meridian
