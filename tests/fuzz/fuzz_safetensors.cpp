// Fuzz target: SafetensorsFile::parse on arbitrary bytes. It must never crash or read out of
// bounds; an accepted image must be self-consistent, and a refused one must give a one-line
// error that names the origin.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/assert.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace meridian::io;
  auto file = SafetensorsFile::parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!file.is_ok()) {
    const std::string& msg = file.status().message();
    MERIDIAN_ASSERT(msg.rfind("fuzz: ", 0) == 0, "error does not name the origin: {}", msg);
    MERIDIAN_ASSERT(msg.find('\n') == std::string::npos, "error is not one line: {}", msg);
    return 0;
  }
  size_t total = 0;
  unsigned checksum = 0;
  const TensorView* prev = nullptr;
  for (const TensorView& t : file->tensors()) {
    MERIDIAN_ASSERT(t.nbytes == static_cast<size_t>(t.numel()) * dtype_size(t.dtype), "tensor {}: nbytes {} != numel {} * {}",
                    t.name, t.nbytes, t.numel(), dtype_size(t.dtype));
    MERIDIAN_ASSERT(prev == nullptr || prev->name < t.name, "tensors not sorted by name");
    MERIDIAN_ASSERT(file->find(t.name) == &t, "find({}) does not return the tensor", t.name);
    for (size_t i = 0; i < t.nbytes; ++i) checksum += t.data[i];  // every byte must be readable (ASan)
    total += t.nbytes;
    prev = &t;
  }
  MERIDIAN_ASSERT(total <= size, "tensors claim {} bytes of a {}-byte image", total, size);
  (void)checksum;
  return 0;
}
