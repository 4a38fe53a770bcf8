// Token shards: writing (atomic, streamed in chunks) and validated, memory-mapped reading.
// The header is checked completely at open; the tokens themselves are not scanned (a token
// >= vocab_size would cost a pass over gigabytes), the model's embedding bounds catch those.
#include "data/shard.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "core/assert.h"

namespace meridian::data {

static_assert(std::endian::native == std::endian::little, "token shards assume a little-endian host");

namespace {

const char* const kRetokenizeHint = "re-create the shard with `meridian tokenize`";

std::string errno_text() { return std::strerror(errno); }

uint32_t load_u32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

uint64_t load_u64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

Status write_all(int fd, const std::string& path, const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::error(path + ": write failed (" + errno_text() + ")", "check free disk space");
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return Status::ok();
}

// Narrows tokens to `token_bytes` each and writes them; a chunk at a time so that a shard never
// needs a second full-size copy in memory.
template <typename Narrow>
Status write_tokens(int fd, const std::string& path, const std::vector<uint32_t>& tokens) {
  constexpr size_t kChunk = 1 << 16;
  std::vector<Narrow> chunk(kChunk);
  for (size_t i = 0; i < tokens.size(); i += kChunk) {
    const size_t n = std::min(kChunk, tokens.size() - i);
    for (size_t k = 0; k < n; ++k) chunk[k] = static_cast<Narrow>(tokens[i + k]);
    MERIDIAN_RETURN_IF_ERROR(write_all(fd, path, chunk.data(), n * sizeof(Narrow)));
  }
  return Status::ok();
}

}  // namespace

ShardWriter::ShardWriter(std::string path, uint32_t vocab_size) : path_(std::move(path)), vocab_size_(vocab_size) {
  MERIDIAN_ASSERT(vocab_size > 0, "vocab_size must be positive");
}

void ShardWriter::append(const uint32_t* tokens, size_t n) {
  for (size_t i = 0; i < n; ++i)
    MERIDIAN_ASSERT(tokens[i] < vocab_size_, "token {} out of range for vocab_size {}", tokens[i], vocab_size_);
  tokens_.insert(tokens_.end(), tokens, tokens + n);
}

Status ShardWriter::finish() {
  const uint32_t token_bytes = vocab_size_ <= 65536 ? 2 : 4;
  unsigned char header[kShardHeaderBytes] = {};
  const uint64_t count = tokens_.size();
  std::memcpy(header + 0, kShardMagic, 8);
  std::memcpy(header + 8, &kShardVersion, 4);
  std::memcpy(header + 12, &token_bytes, 4);
  std::memcpy(header + 16, &count, 8);
  std::memcpy(header + 24, &vocab_size_, 4);

  const std::string tmp = path_ + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::error(tmp + ": cannot create (" + errno_text() + ")", "check that the directory exists and is writable");
  Status st = write_all(fd, tmp, header, sizeof(header));
  if (st) st = token_bytes == 2 ? write_tokens<uint16_t>(fd, tmp, tokens_) : write_tokens<uint32_t>(fd, tmp, tokens_);
  if (st && ::fsync(fd) != 0) st = Status::error(tmp + ": fsync failed (" + errno_text() + ")");
  ::close(fd);
  if (st && ::rename(tmp.c_str(), path_.c_str()) != 0)
    st = Status::error(path_ + ": rename from " + tmp + " failed (" + errno_text() + ")");
  if (!st) {
    ::unlink(tmp.c_str());
    return st;
  }
  return fsync_dir(std::filesystem::path(path_).parent_path().string());
}

Status check_shard_image(const unsigned char* data, size_t size, const std::string& origin, uint64_t* count,
                         uint32_t* token_bytes, uint32_t* vocab_size) {
  if (size < 8 || std::memcmp(data, kShardMagic, 8) != 0)
    return Status::error(origin + ": not a Meridian token shard (bad magic)",
                         "token shards are written by `meridian tokenize`; check the data path");
  if (size < kShardHeaderBytes)
    return Status::error(origin + ": truncated: " + std::to_string(size) + " bytes, the shard header alone is " +
                             std::to_string(kShardHeaderBytes),
                         kRetokenizeHint);
  const uint32_t version = load_u32(data + 8);
  if (version != kShardVersion)
    return Status::error(origin + ": token shard format version " + std::to_string(version) + ", this build reads version " +
                             std::to_string(kShardVersion),
                         "re-run `meridian tokenize` with this build to re-create the shards");
  const uint32_t tb = load_u32(data + 12);
  if (tb != 2 && tb != 4)
    return Status::error(origin + ": corrupt header: token_bytes is " + std::to_string(tb) + ", expected 2 or 4", kRetokenizeHint);
  const uint64_t n = load_u64(data + 16);
  const uint32_t vocab = load_u32(data + 24);
  if (vocab == 0 || (tb == 2 && vocab > 65536))
    return Status::error(origin + ": corrupt header: vocab_size " + std::to_string(vocab) + " does not fit token_bytes " +
                             std::to_string(tb),
                         kRetokenizeHint);
  const uint32_t reserved = load_u32(data + 28);
  if (reserved != 0)
    return Status::error(origin + ": corrupt header: reserved field is " + std::to_string(reserved) + ", expected 0",
                         kRetokenizeHint);
  const uint64_t payload_max = (size - kShardHeaderBytes) / tb;  // tokens that would fit in the file
  if (n != payload_max || (size - kShardHeaderBytes) % tb != 0) {
    // Report in bytes; the expected size may not fit 64 bits if `count` is garbage.
    const bool overflow = n > (UINT64_MAX - kShardHeaderBytes) / tb;
    const std::string expected =
        overflow ? std::string("more than 2^64") : std::to_string(kShardHeaderBytes + n * tb);
    const bool short_file = overflow || kShardHeaderBytes + n * tb > size;
    return Status::error(origin + ": " + (short_file ? "truncated" : "corrupt") + ": header says " + std::to_string(n) +
                             " tokens of " + std::to_string(tb) + " bytes (" + expected + " bytes in all), file has " +
                             std::to_string(size) + " bytes",
                         short_file ? "the file was cut short (interrupted copy?); " + std::string(kRetokenizeHint)
                                    : "the file has trailing bytes; " + std::string(kRetokenizeHint));
  }
  *count = n;
  *token_bytes = tb;
  *vocab_size = vocab;
  return Status::ok();
}

Result<Shard> Shard::open(const std::string& path) {
  auto mapped = MappedFile::open(path);
  if (!mapped) return mapped.status();
  Shard shard;
  MERIDIAN_RETURN_IF_ERROR(
      check_shard_image(mapped->data(), mapped->size(), path, &shard.count_, &shard.token_bytes_, &shard.vocab_size_));
  shard.file_ = std::move(mapped.value());
  return shard;
}

uint32_t Shard::token(uint64_t i) const {
  MERIDIAN_ASSERT(i < count_, "token index {} out of range for shard {} of {} tokens", i, path(), count_);
  const unsigned char* p = file_.data() + kShardHeaderBytes + i * token_bytes_;
  if (token_bytes_ == 2) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
  }
  return load_u32(p);
}

void Shard::read(uint64_t begin, uint64_t n, int64_t* out) const {
  MERIDIAN_ASSERT(begin <= count_ && n <= count_ - begin, "read [{}, +{}) out of range for shard {} of {} tokens", begin, n,
                  path(), count_);
  const unsigned char* p = file_.data() + kShardHeaderBytes + begin * token_bytes_;
  if (token_bytes_ == 2) {
    for (uint64_t i = 0; i < n; ++i) {
      uint16_t v;
      std::memcpy(&v, p + 2 * i, 2);
      out[i] = v;
    }
  } else {
    for (uint64_t i = 0; i < n; ++i) out[i] = load_u32(p + 4 * i);
  }
}

}  // namespace meridian::data
