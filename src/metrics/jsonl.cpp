#include "metrics/jsonl.h"

#include <cerrno>
#include <cstring>

namespace meridian::metrics {

Result<JsonlSink> JsonlSink::open(const std::string& path) {
  JsonlSink sink;
  sink.file_ = std::fopen(path.c_str(), "a");
  if (!sink.file_) return Status::error(path + ": cannot open for appending (" + std::strerror(errno) + ")");
  return sink;
}

JsonlSink& JsonlSink::operator=(JsonlSink&& other) noexcept {
  if (this != &other) {
    if (file_) std::fclose(file_);
    file_ = other.file_;
    other.file_ = nullptr;
  }
  return *this;
}

JsonlSink::~JsonlSink() {
  if (file_) std::fclose(file_);
}

void JsonlSink::write(const std::string& json_object) {
  if (!file_) return;
  std::fputs(json_object.c_str(), file_);
  std::fputc('\n', file_);
  std::fflush(file_);
}

}  // namespace meridian::metrics
