// Wire codecs: plain loops written so that GCC and Clang auto-vectorise them at -O2 with the
// baseline x86-64 ISA (SSE2): no calls inside loops, no data-dependent branches, bit tricks
// instead of nearbyint/lrint (which SSE2 cannot vectorise). The build compiles this file with
// the dynamic vectoriser cost model and without floating-point contraction (see
// src/net/CMakeLists.txt): contraction would fuse decode_add's multiply and add, and change
// results between builds.
//
// Rounding relies on the default floating-point environment (round to nearest even, no
// flush-to-zero); nothing in Meridian changes it.
#include "net/quant/codec.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/assert.h"

// Hot loops are compiled twice, for AVX2 and for the baseline ISA, and picked at load time
// (GCC/Clang function multiversioning): about 3x faster int8 encoding on AVX2 machines without
// giving up portable binaries. Both versions perform the same IEEE operations (no FMA: the file
// is built without contraction), so their results are bit-identical.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(MERIDIAN_NO_TARGET_CLONES)
#define MERIDIAN_CODEC_KERNEL __attribute__((target_clones("avx2", "default")))
#else
#define MERIDIAN_CODEC_KERNEL
#endif
#define MERIDIAN_ALWAYS_INLINE inline __attribute__((always_inline))

namespace meridian::net {

static_assert(std::endian::native == std::endian::little, "wire formats assume a little-endian host");
static_assert(std::numeric_limits<float>::is_iec559, "codecs assume IEEE binary32 floats");

namespace {

inline uint32_t bits_of(float x) { return std::bit_cast<uint32_t>(x); }
inline float float_of(uint32_t b) { return std::bit_cast<float>(b); }

// Adding and subtracting 1.5 * 2^23 rounds any |v| < 2^22 to the nearest integer, ties to
// even, in the current rounding mode; unlike nearbyintf it vectorises on SSE2.
constexpr float kRoundMagic = 12582912.0f;

void check_alignment(const void* p) {
  MERIDIAN_ASSERT(reinterpret_cast<uintptr_t>(p) % 4 == 0, "codec buffers must be 4-byte aligned, got {}", p);
}

// ---- bf16 -----------------------------------------------------------------------------------

inline uint16_t bf16_from_bits(uint32_t b) {
  // Round to nearest even on the 16 dropped bits; a NaN stays a (quiet) NaN instead of
  // carrying into the exponent.
  const uint32_t rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  const bool is_nan = (b & 0x7fffffffu) > 0x7f800000u;
  return static_cast<uint16_t>(is_nan ? ((b >> 16) | 0x40u) : rounded);
}

// ---- fp16 -----------------------------------------------------------------------------------
// The conversions use the floating-point unit to do the rounding (the technique of
// Maratyszcza's FP16 library): scaling by 2^112 then 2^-110 turns too-large values into inf,
// and adding a power of two aligned with the target exponent makes the FPU round the mantissa
// to 10 bits, ties to even, subnormals included.

inline uint16_t fp16_from_float(float f) {
  const float scale_to_inf = 0x1.0p+112f;
  const float scale_to_zero = 0x1.0p-110f;
  float base = (std::fabs(f) * scale_to_inf) * scale_to_zero;
  const uint32_t w = bits_of(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xff000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = float_of((bias >> 1) + 0x07800000u) + base;
  const uint32_t b = bits_of(base);
  const uint32_t exp_bits = (b >> 13) & 0x00007c00u;
  const uint32_t mantissa_bits = b & 0x00000fffu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xff000000u ? 0x7e00u : nonsign));
}

inline float float_from_fp16(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  // Normal numbers, inf and NaN: move exponent and mantissa into place, rebias by 2^-112.
  const float normalized = float_of((two_w >> 4) + (0xe0u << 23)) * 0x1.0p-112f;
  // Subnormals: build 0.5 + m * 2^-24 exactly and subtract 0.5.
  const float denormalized = float_of((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude = two_w < (1u << 27) ? bits_of(denormalized) : bits_of(normalized);
  return float_of(sign | magnitude);
}

// ---- int8 (ours) ----------------------------------------------------------------------------

size_t int8_block_count(size_t count) { return (count + kInt8BlockValues - 1) / kInt8BlockValues; }

// Quantizes one block of n <= 256 values; returns its scale.
MERIDIAN_ALWAYS_INLINE float int8_encode_block(const float* __restrict x, size_t n, uint8_t* __restrict q) {
  // max |x| on the bit patterns: for non-negative floats the integer order is the float order,
  // and a NaN or inf shows up as a pattern >= 0x7f800000.
  uint32_t amax_bits = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t a = bits_of(x[i]) & 0x7fffffffu;
    amax_bits = a > amax_bits ? a : amax_bits;
  }
  if (amax_bits >= 0x7f800000u) {  // inf or NaN in the block: the whole block decodes to NaN
    std::memset(q, 0, n);
    return std::numeric_limits<float>::quiet_NaN();
  }
  if (amax_bits == 0) {
    std::memset(q, 0, n);
    return 0.0f;
  }
  const float amax = float_of(amax_bits);
  const float scale = amax / 127.0f;
  if (amax < 1e-30f) {
    // 127 / amax would overflow; such tiny blocks take the slow exact path.
    for (size_t i = 0; i < n; ++i) {
      const float v = std::clamp(x[i] / scale, -127.0f, 127.0f);
      q[i] = static_cast<uint8_t>(static_cast<int8_t>(static_cast<int32_t>(std::nearbyint(v))));
    }
    return scale;
  }
  const float inv_scale = 127.0f / amax;
  if (n == kInt8BlockValues) {
    // Full blocks: v + 1.5 * 2^23 rounds v to the nearest integer (ties to even) into the low
    // mantissa bits, so the low byte of the sum's bit pattern is the int8 code in two's
    // complement. Two fixed-length passes (round into int32 bit patterns, then truncate to
    // bytes) vectorise fully; one fused loop with a float->int8 conversion did not.
    int32_t rounded[kInt8BlockValues];
    for (size_t i = 0; i < kInt8BlockValues; ++i) {
      float v = x[i] * inv_scale;
      v = v < -127.0f ? -127.0f : v;
      v = v > 127.0f ? 127.0f : v;
      rounded[i] = static_cast<int32_t>(bits_of(v + kRoundMagic));
    }
    for (size_t i = 0; i < kInt8BlockValues; ++i) q[i] = static_cast<uint8_t>(rounded[i]);
    return scale;
  }
  for (size_t i = 0; i < n; ++i) {
    float v = x[i] * inv_scale;
    v = v < -127.0f ? -127.0f : v;
    v = v > 127.0f ? 127.0f : v;
    v = (v + kRoundMagic) - kRoundMagic;
    q[i] = static_cast<uint8_t>(static_cast<int8_t>(static_cast<int32_t>(v)));
  }
  return scale;
}

MERIDIAN_CODEC_KERNEL void int8_encode(const float* x, size_t count, std::byte* dst) {
  const size_t blocks = int8_block_count(count);
  float* scales = reinterpret_cast<float*>(dst);
  uint8_t* q = reinterpret_cast<uint8_t*>(dst + 4 * blocks);
  const size_t full_blocks = count / kInt8BlockValues;
  for (size_t b = 0; b < full_blocks; ++b) {  // constant trip count: no remainder loops
    scales[b] = int8_encode_block(x + b * kInt8BlockValues, kInt8BlockValues, q + b * kInt8BlockValues);
  }
  if (full_blocks < blocks) {
    const size_t begin = full_blocks * kInt8BlockValues;
    scales[full_blocks] = int8_encode_block(x + begin, count - begin, q + begin);
  }
}

template <bool kAdd>
MERIDIAN_ALWAYS_INLINE void int8_decode_body(const std::byte* src, size_t count, float* __restrict out) {
  const size_t blocks = int8_block_count(count);
  const float* scales = reinterpret_cast<const float*>(src);
  const int8_t* q = reinterpret_cast<const int8_t*>(src + 4 * blocks);
  for (size_t b = 0; b < blocks; ++b) {
    const size_t begin = b * kInt8BlockValues;
    const size_t n = std::min(kInt8BlockValues, count - begin);
    const float scale = scales[b];
    const int8_t* __restrict qb = q + begin;
    float* __restrict ob = out + begin;
    for (size_t i = 0; i < n; ++i) {
      const float v = static_cast<float>(qb[i]) * scale;
      if constexpr (kAdd) {
        ob[i] += v;
      } else {
        ob[i] = v;
      }
    }
  }
}

MERIDIAN_CODEC_KERNEL void int8_decode(const std::byte* src, size_t count, float* out) {
  int8_decode_body<false>(src, count, out);
}
MERIDIAN_CODEC_KERNEL void int8_decode_add(const std::byte* src, size_t count, float* out) {
  int8_decode_body<true>(src, count, out);
}

// ---- bf16 / fp16 / fp32 buffer kernels ------------------------------------------------------

MERIDIAN_CODEC_KERNEL void bf16_encode(const float* __restrict in, size_t count, uint16_t* __restrict out) {
  for (size_t i = 0; i < count; ++i) out[i] = bf16_from_bits(bits_of(in[i]));
}
MERIDIAN_CODEC_KERNEL void fp16_encode(const float* __restrict in, size_t count, uint16_t* __restrict out) {
  for (size_t i = 0; i < count; ++i) out[i] = fp16_from_float(in[i]);
}

template <bool kAdd>
MERIDIAN_ALWAYS_INLINE void store(float* __restrict out, size_t i, float v) {
  if constexpr (kAdd) {
    out[i] += v;
  } else {
    out[i] = v;
  }
}

MERIDIAN_CODEC_KERNEL void bf16_decode(const uint16_t* __restrict in, size_t count, float* __restrict out) {
  for (size_t i = 0; i < count; ++i) store<false>(out, i, float_of(static_cast<uint32_t>(in[i]) << 16));
}
MERIDIAN_CODEC_KERNEL void bf16_decode_add(const uint16_t* __restrict in, size_t count, float* __restrict out) {
  for (size_t i = 0; i < count; ++i) store<true>(out, i, float_of(static_cast<uint32_t>(in[i]) << 16));
}
MERIDIAN_CODEC_KERNEL void fp16_decode(const uint16_t* __restrict in, size_t count, float* __restrict out) {
  for (size_t i = 0; i < count; ++i) store<false>(out, i, float_from_fp16(in[i]));
}
MERIDIAN_CODEC_KERNEL void fp16_decode_add(const uint16_t* __restrict in, size_t count, float* __restrict out) {
  for (size_t i = 0; i < count; ++i) store<true>(out, i, float_from_fp16(in[i]));
}
MERIDIAN_CODEC_KERNEL void fp32_decode_add(const float* __restrict in, size_t count, float* __restrict out) {
  for (size_t i = 0; i < count; ++i) store<true>(out, i, in[i]);
}

// ---- PRIME's int8 ---------------------------------------------------------------------------
// A faithful single-threaded port of PRIME's uniform_8bit_quantize (zeroband/C/compression.cpp):
// no centering, std = ||x|| / sqrt(n - 1), scale = 6 std / 256, zero point 128,
// q = clamp(round_half_away(x / scale) + 128, 0, 255), lookup[b] = mean of the inputs in bin b
// (accumulated in fp32 as PRIME does). Inputs are clamped to the bin range before the integer
// conversion, which only differs from PRIME where PRIME's conversion would be undefined.

MERIDIAN_CODEC_KERNEL void prime_int8_encode(const float* x, size_t count, std::byte* dst) {
  constexpr int kZeroPoint = 128;
  constexpr double kRangeInSigmas = 6.0;
  double sumsq[4] = {0, 0, 0, 0};
  size_t i = 0;
  for (; i + 4 <= count; i += 4) {
    for (int l = 0; l < 4; ++l) sumsq[l] += static_cast<double>(x[i + l]) * x[i + l];
  }
  for (; i < count; ++i) sumsq[0] += static_cast<double>(x[i]) * x[i];
  const double norm = std::sqrt(sumsq[0] + sumsq[1] + sumsq[2] + sumsq[3]);
  const double std_unbiased = norm / std::sqrt(static_cast<double>(count > 1 ? count - 1 : 1));
  float scale = static_cast<float>(kRangeInSigmas * std_unbiased / kPrimeInt8Bins);
  if (!(scale > 0.0f) || !std::isfinite(scale)) scale = 1.0f;
  const float inv_scale = 1.0f / scale;

  float* lookup = reinterpret_cast<float*>(dst);
  uint8_t* q = reinterpret_cast<uint8_t*>(dst + 4 * kPrimeInt8Bins);
  for (size_t j = 0; j < count; ++j) {
    const float v = std::clamp(x[j] * inv_scale, -256.0f, 256.0f);  // NaN -> treated as 0 below
    const int32_t r = std::isnan(v) ? 0 : static_cast<int32_t>(std::round(v)) + kZeroPoint;
    q[j] = static_cast<uint8_t>(std::clamp(r, 0, 255));
  }
  float sums[kPrimeInt8Bins] = {};
  int64_t counts[kPrimeInt8Bins] = {};
  for (size_t j = 0; j < count; ++j) {
    sums[q[j]] += x[j];
    counts[q[j]] += 1;
  }
  for (size_t b = 0; b < kPrimeInt8Bins; ++b) {
    lookup[b] = counts[b] > 0 ? sums[b] / static_cast<float>(counts[b]) : 0.0f;
  }
}

template <bool kAdd>
MERIDIAN_ALWAYS_INLINE void prime_int8_decode(const std::byte* src, size_t count, float* __restrict out) {
  float lookup[kPrimeInt8Bins];
  std::memcpy(lookup, src, sizeof(lookup));
  const uint8_t* q = reinterpret_cast<const uint8_t*>(src + 4 * kPrimeInt8Bins);
  for (size_t i = 0; i < count; ++i) {
    if constexpr (kAdd) {
      out[i] += lookup[q[i]];
    } else {
      out[i] = lookup[q[i]];
    }
  }
}

template <bool kAdd>
void decode_impl(Codec codec, std::span<const std::byte> src, std::span<float> dst) {
  const size_t count = dst.size();
  MERIDIAN_ASSERT(src.size() == encoded_size(codec, count), "codec {}: {} encoded bytes for {} values, expected {}",
                  codec_name(codec), src.size(), count, encoded_size(codec, count));
  if (count == 0) return;
  check_alignment(src.data());
  float* out = dst.data();
  const uint16_t* in16 = reinterpret_cast<const uint16_t*>(src.data());
  switch (codec) {
    case Codec::kFp32:
      if constexpr (kAdd) {
        fp32_decode_add(reinterpret_cast<const float*>(src.data()), count, out);
      } else {
        std::memcpy(out, src.data(), 4 * count);
      }
      return;
    case Codec::kBf16:
      kAdd ? bf16_decode_add(in16, count, out) : bf16_decode(in16, count, out);
      return;
    case Codec::kFp16:
      kAdd ? fp16_decode_add(in16, count, out) : fp16_decode(in16, count, out);
      return;
    case Codec::kInt8:
      kAdd ? int8_decode_add(src.data(), count, out) : int8_decode(src.data(), count, out);
      return;
    case Codec::kPrimeInt8:
      prime_int8_decode<kAdd>(src.data(), count, out);
      return;
  }
  MERIDIAN_ASSERT(false, "unknown codec {}", static_cast<int>(codec));
}

}  // namespace

std::string_view codec_name(Codec codec) {
  switch (codec) {
    case Codec::kFp32: return "fp32";
    case Codec::kBf16: return "bf16";
    case Codec::kFp16: return "fp16";
    case Codec::kInt8: return "int8";
    case Codec::kPrimeInt8: return "prime_int8";
  }
  return "unknown";
}

std::optional<Codec> parse_codec(std::string_view name) {
  for (int c = 0; c < kCodecCount; ++c) {
    if (codec_name(static_cast<Codec>(c)) == name) return static_cast<Codec>(c);
  }
  return std::nullopt;
}

bool codec_is_known(uint8_t wire_value) { return wire_value < kCodecCount; }

size_t encoded_size(Codec codec, size_t count) {
  switch (codec) {
    case Codec::kFp32: return 4 * count;
    case Codec::kBf16:
    case Codec::kFp16: return 2 * count;
    case Codec::kInt8: return count + 4 * int8_block_count(count);
    case Codec::kPrimeInt8: return count == 0 ? 0 : count + 4 * kPrimeInt8Bins;
  }
  MERIDIAN_ASSERT(false, "unknown codec {}", static_cast<int>(codec));
}

void encode(Codec codec, std::span<const float> src, std::span<std::byte> dst) {
  const size_t count = src.size();
  MERIDIAN_ASSERT(dst.size() == encoded_size(codec, count), "codec {}: {} bytes of room for {} values, need {}",
                  codec_name(codec), dst.size(), count, encoded_size(codec, count));
  if (count == 0) return;
  check_alignment(dst.data());
  const float* in = src.data();
  switch (codec) {
    case Codec::kFp32:
      std::memcpy(dst.data(), in, 4 * count);
      return;
    case Codec::kBf16:
      bf16_encode(in, count, reinterpret_cast<uint16_t*>(dst.data()));
      return;
    case Codec::kFp16:
      fp16_encode(in, count, reinterpret_cast<uint16_t*>(dst.data()));
      return;
    case Codec::kInt8:
      int8_encode(in, count, dst.data());
      return;
    case Codec::kPrimeInt8:
      prime_int8_encode(in, count, dst.data());
      return;
  }
  MERIDIAN_ASSERT(false, "unknown codec {}", static_cast<int>(codec));
}

void decode(Codec codec, std::span<const std::byte> src, std::span<float> dst) { decode_impl<false>(codec, src, dst); }
void decode_add(Codec codec, std::span<const std::byte> src, std::span<float> acc) { decode_impl<true>(codec, src, acc); }

uint16_t fp32_to_bf16(float x) { return bf16_from_bits(bits_of(x)); }
float bf16_to_fp32(uint16_t h) { return float_of(static_cast<uint32_t>(h) << 16); }
uint16_t fp32_to_fp16(float x) { return fp16_from_float(x); }
float fp16_to_fp32(uint16_t h) { return float_from_fp16(h); }

}  // namespace meridian::net
