// Wire codecs for fp32 buffers: how a run of fp32 values is written on the wire for the
// all-reduce, and read back. Plain loops that the compiler auto-vectorises (see codec.cpp).
//
// Deliberately not here: framing, headers, chunking (collective/), error feedback, and any
// dtype other than fp32 on the host side. Every codec is deterministic: the same input bytes
// give the same encoded bytes on every machine, and decoding is a single correctly rounded
// operation per value (a conversion or one multiply), so all peers that decode the same
// encoded chunk get bit-identical floats, whatever their compiler flags.
//
// Wire formats (little-endian), for a run of `count` values, and their size in bytes:
//   fp32        raw IEEE binary32                                    4 * count
//   bf16        upper 16 bits, round to nearest even                 2 * count
//   fp16        IEEE binary16, round to nearest even, subnormals,    2 * count
//               overflow to +-inf, NaN kept (quiet)
//   int8        blocks of kInt8BlockValues values; per block an fp32 count + 4 * ceil(count / 256)
//               scale = max|x| / 127, then one int8 per value,
//               q = round_to_nearest_even(x / scale), symmetric in
//               [-127, 127]. Layout: all block scales first, then all
//               values. A block whose max is not finite decodes to NaN.
//   prime_int8  PRIME's codec, for comparison: per run, scale from the  count + 1024 (count > 0)
//               standard deviation (6 sigma over 256 bins), zero
//               point 128, q = clamp(round(x / scale) + 128, 0, 255);
//               decoding looks up a 256-entry table of the mean of the
//               values in each bin. Layout: table (256 fp32), values.
// A run of zero values encodes to zero bytes with every codec.
//
// Invariant: encoded_size(codec, count) is exactly the number of bytes encode writes and
// decode reads; callers size buffers with it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace meridian::net {

enum class Codec : uint8_t {
  kFp32 = 0,
  kBf16 = 1,
  kFp16 = 2,
  kInt8 = 3,       // ours: per-block absmax scale
  kPrimeInt8 = 4,  // PRIME's: per-run std-dev scale + lookup table of bin means
};
inline constexpr int kCodecCount = 5;
inline constexpr size_t kInt8BlockValues = 256;
inline constexpr size_t kPrimeInt8Bins = 256;

std::string_view codec_name(Codec codec);
std::optional<Codec> parse_codec(std::string_view name);  // "fp32", "bf16", "fp16", "int8", "prime_int8"
bool codec_is_known(uint8_t wire_value);

// Bytes that encode() writes for `count` values.
size_t encoded_size(Codec codec, size_t count);

// dst.size() must equal encoded_size(codec, src.size()) (asserted).
void encode(Codec codec, std::span<const float> src, std::span<std::byte> dst);
// src.size() must equal encoded_size(codec, dst.size()) (asserted).
void decode(Codec codec, std::span<const std::byte> src, std::span<float> dst);
// acc[i] += decoded value i, as one fp32 addition per value (no fused multiply-add), so the
// result equals decode() into a temporary followed by an fp32 add.
void decode_add(Codec codec, std::span<const std::byte> src, std::span<float> acc);

// Scalar conversions, exposed for tests and for code that converts single values.
uint16_t fp32_to_bf16(float x);
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float x);
float fp16_to_fp32(uint16_t h);

}  // namespace meridian::net
