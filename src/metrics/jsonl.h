// Append-only JSON-lines metrics file: one object per line, flushed after each record so a
// killed run keeps every record it reported.
#pragma once

#include <cstdio>
#include <string>

#include "core/status.h"

namespace meridian::metrics {

class JsonlSink {
 public:
  static Result<JsonlSink> open(const std::string& path);  // appends
  JsonlSink() = default;
  JsonlSink(JsonlSink&& other) noexcept : file_(other.file_) { other.file_ = nullptr; }
  JsonlSink& operator=(JsonlSink&& other) noexcept;
  JsonlSink(const JsonlSink&) = delete;
  JsonlSink& operator=(const JsonlSink&) = delete;
  ~JsonlSink();
  void write(const std::string& json_object);  // one line, no embedded newline

 private:
  std::FILE* file_ = nullptr;
};

}  // namespace meridian::metrics
