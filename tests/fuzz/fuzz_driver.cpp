// A libFuzzer-compatible driver for compilers without libFuzzer (g++): runs every file of a seed
// corpus through LLVMFuzzerTestOneInput, then a bounded number of deterministic mutations of
// those seeds (bit flips, "interesting" bytes and lengths, truncations, insertions, deletions,
// duplicated chunks), seeded by SplitMix64 so that a failure replays exactly.
//
//   fuzz_<target> <corpus_dir> [mutations=20000] [seed=1]
//
// Not coverage-guided: it finds what blind mutation near the seeds finds. The optional libFuzzer
// build (MERIDIAN_LIBFUZZER with clang) is the coverage-guided one. A crash aborts the process,
// so the CTest test fails; the last input is announced on stderr only when -v is given
// (printing every input would flood the log).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "core/hash.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using Bytes = std::vector<uint8_t>;

void run_one(const Bytes& input) {
  // A copy of exactly `size` bytes on the heap, so that ASan sees reads past the end.
  std::unique_ptr<uint8_t[]> copy(new uint8_t[input.size() + (input.empty() ? 1 : 0)]);
  if (!input.empty()) std::memcpy(copy.get(), input.data(), input.size());
  LLVMFuzzerTestOneInput(copy.get(), input.size());
}

void mutate(Bytes& b, meridian::SplitMix64& rng) {
  static const uint8_t kInteresting[] = {0, 1, 2, 4, 8, 0x7f, 0x80, 0xff, '"', '{', '}', '[', ']', ',', ':', '-', '0', '9', ' ', '\\', 'e'};
  static const uint64_t kLengths[] = {0, 1, 7, 8, 31, 32, 33, 0x7fffffffffffffffull, 0xffffffffffffffffull, 100000001, 1ull << 32};
  const int ops = 1 + static_cast<int>(rng.below(4));
  for (int op = 0; op < ops; ++op) {
    switch (rng.below(8)) {
      case 0:  // flip one bit
        if (!b.empty()) b[rng.below(b.size())] ^= static_cast<uint8_t>(1u << rng.below(8));
        break;
      case 1:  // set an interesting byte
        if (!b.empty()) b[rng.below(b.size())] = kInteresting[rng.below(std::size(kInteresting))];
        break;
      case 2:  // truncate
        b.resize(rng.below(b.size() + 1));
        break;
      case 3: {  // insert random bytes
        const size_t at = rng.below(b.size() + 1);
        const size_t n = 1 + rng.below(16);
        Bytes ins(n);
        for (auto& x : ins) x = static_cast<uint8_t>(rng.next());
        b.insert(b.begin() + static_cast<std::ptrdiff_t>(at), ins.begin(), ins.end());
        break;
      }
      case 4: {  // delete a range
        if (b.empty()) break;
        const size_t at = rng.below(b.size());
        const size_t n = 1 + rng.below(std::min<size_t>(16, b.size() - at));
        b.erase(b.begin() + static_cast<std::ptrdiff_t>(at), b.begin() + static_cast<std::ptrdiff_t>(at + n));
        break;
      }
      case 5: {  // duplicate a chunk
        if (b.empty()) break;
        const size_t at = rng.below(b.size());
        const size_t n = 1 + rng.below(std::min<size_t>(32, b.size() - at));
        const Bytes chunk(b.begin() + static_cast<std::ptrdiff_t>(at), b.begin() + static_cast<std::ptrdiff_t>(at + n));
        const size_t to = rng.below(b.size() + 1);
        b.insert(b.begin() + static_cast<std::ptrdiff_t>(to), chunk.begin(), chunk.end());
        break;
      }
      case 6: {  // an interesting little-endian length at an 8-aligned offset (header fields)
        if (b.size() < 8) break;
        const size_t at = 8 * rng.below(b.size() / 8);
        const uint64_t v = kLengths[rng.below(std::size(kLengths))];
        std::memcpy(b.data() + at, &v, std::min<size_t>(8, b.size() - at));
        break;
      }
      default:  // replace a digit run position with another digit (offsets and shapes in JSON)
        if (!b.empty()) {
          const size_t at = rng.below(b.size());
          if (b[at] >= '0' && b[at] <= '9') b[at] = static_cast<uint8_t>('0' + rng.below(10));
        }
        break;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <corpus_dir> [mutations=20000] [seed=1] [-v]\n", argv[0]);
    return 2;
  }
  const uint64_t mutations = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 20000;
  const uint64_t seed = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 1;
  const bool verbose = argc > 4 && std::strcmp(argv[4], "-v") == 0;

  std::vector<std::filesystem::path> paths;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(argv[1], ec))
    if (entry.is_regular_file()) paths.push_back(entry.path());
  if (ec || paths.empty()) {
    std::fprintf(stderr, "%s: no seed files in %s\n", argv[0], argv[1]);
    return 2;  // an empty corpus would make the test vacuous
  }
  std::sort(paths.begin(), paths.end());
  std::vector<Bytes> seeds;
  for (const auto& p : paths) {
    std::ifstream in(p, std::ios::binary);
    seeds.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (verbose) std::fprintf(stderr, "seed %s\n", p.string().c_str());
    run_one(seeds.back());
  }

  meridian::SplitMix64 rng(seed);
  for (uint64_t i = 0; i < mutations; ++i) {
    Bytes input = seeds[rng.below(seeds.size())];
    mutate(input, rng);
    if (verbose) std::fprintf(stderr, "mutation %llu (%zu bytes)\n", static_cast<unsigned long long>(i), input.size());
    run_one(input);
  }
  std::printf("%s: %zu seeds and %llu mutations ran without a crash\n", argv[0], seeds.size(),
              static_cast<unsigned long long>(mutations));
  return 0;
}
