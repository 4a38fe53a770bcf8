// Fuzz target: check_shard_image on arbitrary bytes. An accepted image must have exactly the size
// its header promises; a refused one must give a one-line error that names the origin.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/assert.h"
#include "data/shard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace meridian::data;
  uint64_t count = 0;
  uint32_t token_bytes = 0, vocab_size = 0;
  const meridian::Status st = check_shard_image(data, size, "fuzz", &count, &token_bytes, &vocab_size);
  if (!st.is_ok()) {
    MERIDIAN_ASSERT(st.message().rfind("fuzz: ", 0) == 0, "error does not name the origin: {}", st.message());
    MERIDIAN_ASSERT(st.message().find('\n') == std::string::npos, "error is not one line: {}", st.message());
    MERIDIAN_ASSERT(!st.hint().empty(), "error without a hint: {}", st.message());
    return 0;
  }
  MERIDIAN_ASSERT(token_bytes == 2 || token_bytes == 4, "token_bytes {}", token_bytes);
  MERIDIAN_ASSERT(size == kShardHeaderBytes + count * token_bytes, "size {} != 32 + {} * {}", size, count, token_bytes);
  MERIDIAN_ASSERT(vocab_size > 0, "vocab_size 0 accepted");
  return 0;
}
