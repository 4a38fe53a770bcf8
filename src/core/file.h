// Whole-file reads and atomic writes. An atomic write goes to "<path>.tmp", is fsynced, renamed
// over <path>, and the directory is fsynced: a crash leaves either the old or the new file.
#pragma once

#include <string>
#include <string_view>

#include "core/status.h"

namespace meridian {

Result<std::string> read_file(const std::string& path);
Status write_file_atomic(const std::string& path, std::string_view data);
// fsync a directory so that a rename inside it is durable.
Status fsync_dir(const std::string& dir);

// A read-only memory map of a whole file; empty files map to an empty view.
class MappedFile {
 public:
  static Result<MappedFile> open(const std::string& path);
  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const unsigned char* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  const unsigned char* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace meridian
