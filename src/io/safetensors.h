// safetensors reader and writer of our own: 8-byte little-endian header length N, N bytes of
// JSON header ({"name": {"dtype", "shape", "data_offsets": [begin, end]}, ..., "__metadata__":
// {string: string}}), then the raw little-endian tensor bytes. The format of Hugging Face's
// safetensors library, so files load there unchanged.
//
// Reading is bounds-checked: every offset, shape and size is validated against the file before
// any tensor is exposed; a corrupt or truncated file yields a one-line Status naming the file
// and the defect. Torch-free: tensors are (dtype, shape, bytes) views.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/file.h"
#include "core/status.h"

namespace meridian::io {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

const char* dtype_name(DType d);             // "F32", "BF16", ... as safetensors spells them
Result<DType> dtype_from_name(const std::string& name);
size_t dtype_size(DType d);                  // bytes per element

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const unsigned char* data = nullptr;  // points into the file's mapping (or parsed buffer)
  size_t nbytes = 0;
  int64_t numel() const;
};

// Collects tensors (by pointer: the caller keeps the memory alive until write()) and writes them
// atomically: "<path>.tmp", fsync, rename, fsync of the directory. Tensors are written in
// insertion order; the header lists them sorted by name, as the reference library does.
class SafetensorsWriter {
 public:
  void add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data, size_t nbytes);
  void set_metadata(const std::string& key, const std::string& value);
  Status write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    const void* data;
    size_t nbytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

class SafetensorsFile {
 public:
  // Maps the file and validates it completely.
  static Result<SafetensorsFile> open(const std::string& path);
  // Validates an in-memory image; `origin` names it in errors. Used by tests and the fuzzer.
  static Result<SafetensorsFile> parse(std::string bytes, const std::string& origin);

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<TensorView>& tensors() const { return tensors_; }  // sorted by name
  const TensorView* find(const std::string& name) const;
  const std::string& origin() const { return origin_; }

 private:
  static Result<SafetensorsFile> parse_view(const unsigned char* data, size_t size, const std::string& origin);
  std::shared_ptr<MappedFile> mapping_;     // set when opened from a file
  std::shared_ptr<std::string> buffer_;     // set when parsed from memory
  std::string origin_;
  std::map<std::string, std::string> metadata_;
  std::vector<TensorView> tensors_;
};

}  // namespace meridian::io
