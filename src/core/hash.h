// XXH3 hashes of byte ranges, and a small deterministic RNG (splitmix64) whose sequence does not
// depend on the standard library's implementation: data order and test fixtures rely on it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace meridian {

struct Hash128 {
  uint64_t hi = 0;
  uint64_t lo = 0;
  bool operator==(const Hash128&) const = default;
  std::string hex() const;  // 32 lowercase hex digits
};

Hash128 xxh3_128(const void* data, size_t size, uint64_t seed = 0);
uint64_t xxh3_64(const void* data, size_t size, uint64_t seed = 0);

// Streaming 128-bit hash over several ranges (e.g. every tensor of a checkpoint).
class Hasher128 {
 public:
  Hasher128();
  ~Hasher128();
  Hasher128(const Hasher128&) = delete;
  Hasher128& operator=(const Hasher128&) = delete;
  void update(const void* data, size_t size);
  void update(const std::string& s) { update(s.data(), s.size()); }
  Hash128 digest() const;

 private:
  void* state_;  // XXH3_state_t*
};

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound) without modulo bias (Lemire's method with rejection).
  uint64_t below(uint64_t bound);
  double uniform() { return (next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t state_;
};

}  // namespace meridian
