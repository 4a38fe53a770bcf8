// Token shard files: a 32-byte versioned header, then `count` little-endian tokens.
//
//   offset size  field
//   0      8     magic "MRDNTOK\0"
//   8      4     version (u32, currently 1)
//   12     4     token_bytes (u32: 2 for vocabularies up to 65536, 4 above)
//   16     8     count (u64, number of tokens)
//   24     4     vocab_size (u32, of the tokenizer that wrote the shard)
//   28     4     reserved, zero
//
// Documents are stored back to back, each starting with the tokenizer's BOS id. The file size
// must equal 32 + count * token_bytes; anything else is reported as truncated or corrupt.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/file.h"
#include "core/status.h"

namespace meridian::data {

inline constexpr char kShardMagic[8] = {'M', 'R', 'D', 'N', 'T', 'O', 'K', '\0'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderBytes = 32;

// Writes a shard atomically (temporary name, fsync, rename) once finish() is called.
class ShardWriter {
 public:
  ShardWriter(std::string path, uint32_t vocab_size);
  void append(const uint32_t* tokens, size_t n);
  uint64_t count() const { return tokens_.size(); }
  Status finish();

 private:
  std::string path_;
  uint32_t vocab_size_;
  std::vector<uint32_t> tokens_;
};

class Shard {
 public:
  static Result<Shard> open(const std::string& path);
  uint64_t size() const { return count_; }
  uint32_t vocab_size() const { return vocab_size_; }
  uint32_t token_bytes() const { return token_bytes_; }
  uint32_t token(uint64_t i) const;  // i < size(), asserted
  // Copies tokens [begin, begin + n) into out as int64 (the dtype the model consumes).
  void read(uint64_t begin, uint64_t n, int64_t* out) const;
  const std::string& path() const { return file_.path(); }

 private:
  MappedFile file_;
  uint64_t count_ = 0;
  uint32_t token_bytes_ = 2;
  uint32_t vocab_size_ = 0;
};

// Validates a header image; used by Shard::open and the fuzzer.
Status check_shard_image(const unsigned char* data, size_t size, const std::string& origin,
                         uint64_t* count, uint32_t* token_bytes, uint32_t* vocab_size);

}  // namespace meridian::data
