// Codec micro-benchmark: quantize + dequantize throughput of each wire codec against memcpy on
// the same buffer, and our int8 against PRIME's int8 on speed and error.
//
//   bench_codec [count=16777216] [piece_values=65536] [reps=5]
//
// Throughput is fp32 bytes processed per second: 4 * count / (encode time + decode time), the
// best of `reps` runs; memcpy is 4 * count / (time to copy the fp32 buffer once). The buffer is
// encoded piece by piece as the all-reduce does (one int8 block scale per 256 values; PRIME's
// table per piece). Inputs: Gaussian-like values (sum of four uniforms) with rare 20x outliers,
// roughly what DiLoCo pseudo-gradients look like. Single-threaded.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/hash.h"
#include "net/quant/codec.h"

using meridian::SplitMix64;
using namespace meridian::net;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

template <typename F>
double best_of(int reps, F&& f) {
  double best = 1e300;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, seconds_since(t0));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t count = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : (size_t{1} << 24);
  const size_t piece = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : (size_t{1} << 16);
  const int reps = argc > 3 ? std::atoi(argv[3]) : 5;
  if (count == 0 || piece == 0 || reps <= 0) {
    std::fprintf(stderr, "usage: bench_codec [count>0] [piece_values>0] [reps>0]\n");
    return 2;
  }

  std::vector<float> input(count);
  SplitMix64 rng(42);
  for (size_t i = 0; i < count; ++i) {
    double g = rng.uniform() + rng.uniform() + rng.uniform() + rng.uniform() - 2.0;
    if (rng.below(10000) == 0) g *= 20.0;
    input[i] = static_cast<float>(g * 1e-3);
  }
  std::vector<float> output(count);

  const double fp32_bytes = 4.0 * static_cast<double>(count);
  const double memcpy_s = best_of(reps, [&] { std::memcpy(output.data(), input.data(), 4 * count); });
  const double memcpy_gbs = fp32_bytes / memcpy_s / 1e9;
  std::printf("buffer: %zu fp32 values (%.1f MiB), pieces of %zu values, best of %d\n", count,
              fp32_bytes / (1 << 20), piece, reps);
  std::printf("memcpy: %.2f GB/s\n\n", memcpy_gbs);
  std::printf("%-11s %9s %9s %9s %11s %8s %12s %12s\n", "codec", "bytes/val", "enc GB/s", "dec GB/s",
              "enc+dec GB/s", "x memcpy", "rms error", "max error");

  struct Row {
    double both_gbs = 0, rms = 0, max_err = 0;
  };
  std::vector<Row> rows(kCodecCount);
  for (int c = 0; c < kCodecCount; ++c) {
    const Codec codec = static_cast<Codec>(c);
    // Encoded pieces laid out back to back, each 4-byte aligned (all sizes are multiples of 4
    // except int8's values, so pad each piece).
    std::vector<size_t> offsets;
    size_t total = 0;
    for (size_t begin = 0; begin < count; begin += piece) {
      offsets.push_back(total);
      total += (encoded_size(codec, std::min(piece, count - begin)) + 3) & ~size_t{3};
    }
    std::vector<uint32_t> storage((total + 3) / 4);
    std::byte* encoded = reinterpret_cast<std::byte*>(storage.data());
    auto encode_all = [&] {
      for (size_t p = 0, begin = 0; begin < count; ++p, begin += piece) {
        const size_t n = std::min(piece, count - begin);
        encode(codec, std::span<const float>(input).subspan(begin, n),
               std::span<std::byte>(encoded + offsets[p], encoded_size(codec, n)));
      }
    };
    auto decode_all = [&] {
      for (size_t p = 0, begin = 0; begin < count; ++p, begin += piece) {
        const size_t n = std::min(piece, count - begin);
        decode(codec, std::span<const std::byte>(encoded + offsets[p], encoded_size(codec, n)),
               std::span<float>(output).subspan(begin, n));
      }
    };
    const double enc_s = best_of(reps, encode_all);
    const double dec_s = best_of(reps, decode_all);
    double sq = 0.0, max_err = 0.0;
    for (size_t i = 0; i < count; ++i) {
      const double e = std::fabs(static_cast<double>(output[i]) - input[i]);
      sq += e * e;
      max_err = std::max(max_err, e);
    }
    const double both_gbs = fp32_bytes / (enc_s + dec_s) / 1e9;
    rows[c] = Row{both_gbs, std::sqrt(sq / count), max_err};
    std::printf("%-11s %9.3f %9.2f %9.2f %11.2f %8.2f %12.4g %12.4g\n", std::string(codec_name(codec)).c_str(),
                static_cast<double>(total) / count, fp32_bytes / enc_s / 1e9, fp32_bytes / dec_s / 1e9, both_gbs,
                both_gbs / memcpy_gbs, std::sqrt(sq / count), max_err);
  }
  const Row& ours = rows[static_cast<int>(Codec::kInt8)];
  const Row& prime = rows[static_cast<int>(Codec::kPrimeInt8)];
  std::printf("\nint8 vs prime_int8: %.2fx the speed, %.1fx lower rms error, %.1fx lower max error\n",
              ours.both_gbs / prime.both_gbs, prime.rms / ours.rms, prime.max_err / ours.max_err);
  return 0;
}
