// Wire codecs: exact rounding of bf16/fp16 against independent references, int8 error bounds,
// special values, sizes, and decode_add == decode + add.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/hash.h"
#include "net/quant/codec.h"

namespace meridian::net {
namespace {

std::vector<float> random_values(size_t count, uint64_t seed, float magnitude = 1.0f) {
  SplitMix64 rng(seed);
  std::vector<float> v(count);
  for (float& x : v) x = static_cast<float>((rng.uniform() * 2.0 - 1.0) * magnitude);
  return v;
}

// Encoded bytes in 4-byte aligned storage, as the codecs require.
struct Encoded {
  std::vector<uint32_t> storage;
  size_t size = 0;
  std::span<std::byte> bytes() { return {reinterpret_cast<std::byte*>(storage.data()), size}; }
};

Encoded encode_all(Codec codec, std::span<const float> values) {
  Encoded e;
  e.size = encoded_size(codec, values.size());
  e.storage.assign((e.size + 3) / 4 + 1, 0);
  encode(codec, values, e.bytes());
  return e;
}

std::vector<float> round_trip(Codec codec, std::span<const float> values) {
  Encoded e = encode_all(codec, values);
  std::vector<float> out(values.size(), -12345.0f);
  decode(codec, e.bytes(), out);
  return out;
}

TEST(net_Codec, EncodedSizes) {
  EXPECT_EQ(encoded_size(Codec::kFp32, 1000), 4000u);
  EXPECT_EQ(encoded_size(Codec::kBf16, 1000), 2000u);
  EXPECT_EQ(encoded_size(Codec::kFp16, 1000), 2000u);
  EXPECT_EQ(encoded_size(Codec::kInt8, 1000), 1000u + 4 * 4);  // 4 blocks of 256
  EXPECT_EQ(encoded_size(Codec::kInt8, 256), 256u + 4);
  EXPECT_EQ(encoded_size(Codec::kInt8, 257), 257u + 8);
  EXPECT_EQ(encoded_size(Codec::kPrimeInt8, 1000), 1000u + 1024);
  for (int c = 0; c < kCodecCount; ++c) EXPECT_EQ(encoded_size(static_cast<Codec>(c), 0), 0u);
}

TEST(net_Codec, NamesRoundTrip) {
  for (int c = 0; c < kCodecCount; ++c) {
    const Codec codec = static_cast<Codec>(c);
    ASSERT_EQ(parse_codec(codec_name(codec)), codec);
    EXPECT_TRUE(codec_is_known(static_cast<uint8_t>(c)));
  }
  EXPECT_FALSE(parse_codec("int4").has_value());
  EXPECT_FALSE(codec_is_known(kCodecCount));
}

TEST(net_Codec, Fp32IsExact) {
  const std::vector<float> v = random_values(1001, 1, 1e20f);
  const std::vector<float> out = round_trip(Codec::kFp32, v);
  EXPECT_EQ(0, std::memcmp(v.data(), out.data(), 4 * v.size()));
}

#ifdef __FLT16_MAX__
// The compiler's _Float16 conversions are an independent, correctly rounded reference.
TEST(net_Codec, Fp16DecodeMatchesCompilerForAllHalves) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const _Float16 ref = std::bit_cast<_Float16>(static_cast<uint16_t>(h));
    const float expect = static_cast<float>(ref);
    const float got = fp16_to_fp32(static_cast<uint16_t>(h));
    if (std::isnan(expect)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(expect)) << "half 0x" << std::hex << h;
    }
  }
}

TEST(net_Codec, Fp16EncodeMatchesCompilerOnHardCases) {
  std::vector<float> cases;
  // Every half, the midpoints between neighbours (ties), and values just either side.
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const float a = fp16_to_fp32(static_cast<uint16_t>(h));
    const float b = fp16_to_fp32(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((static_cast<double>(a) + b) / 2);
    for (float x : {a, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
      cases.push_back(x);
      cases.push_back(-x);
    }
  }
  for (float x : {65504.0f, 65519.99f, 65520.0f, 1e6f, std::numeric_limits<float>::infinity(), 1e-8f, 2.98e-8f,
                  2.99e-8f, 5.96e-8f, std::numeric_limits<float>::denorm_min()}) {
    cases.push_back(x);
    cases.push_back(-x);
  }
  const std::vector<float> random = random_values(100000, 7, 70000.0f);
  cases.insert(cases.end(), random.begin(), random.end());
  Encoded e = encode_all(Codec::kFp16, cases);
  const uint16_t* got = reinterpret_cast<const uint16_t*>(e.storage.data());
  for (size_t i = 0; i < cases.size(); ++i) {
    const uint16_t expect = std::bit_cast<uint16_t>(static_cast<_Float16>(cases[i]));
    ASSERT_EQ(got[i], expect) << "value " << cases[i] << " (" << std::hexfloat << cases[i] << ")";
    ASSERT_EQ(fp32_to_fp16(cases[i]), expect);
  }
}
#endif

TEST(net_Codec, Fp16SpecialValues) {
  EXPECT_EQ(fp32_to_fp16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(fp32_to_fp16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(fp32_to_fp16(1e5f), 0x7c00);  // overflow to inf
  EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(fp32_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(fp16_to_fp32(0x0001), 0x1.0p-24f);  // smallest subnormal
}

// bf16 reference: the nearer of the two bf16 neighbours of x (truncation and the next one up
// in magnitude), ties to the one with an even last bit.
uint16_t bf16_reference(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  const uint16_t lo = static_cast<uint16_t>(b >> 16);
  const uint16_t hi = static_cast<uint16_t>(lo + 1);
  const double dx = x;
  const double dlo = std::bit_cast<float>(static_cast<uint32_t>(lo) << 16);
  const double dhi = std::bit_cast<float>(static_cast<uint32_t>(hi) << 16);
  const double elo = std::fabs(dx - dlo), ehi = std::fabs(dhi - dx);
  if (elo < ehi) return lo;
  if (ehi < elo) return hi;
  return (lo & 1) ? hi : lo;
}

TEST(net_Codec, Bf16RoundsToNearestEven) {
  std::vector<float> cases = random_values(200000, 3, 1e3f);
  for (uint32_t m = 0; m < 0x10000; m += 0x10) cases.push_back(std::bit_cast<float>(0x3f800000u | m));  // ties etc.
  cases.push_back(std::bit_cast<float>(0x3f808000u));  // tie, lower is even -> down
  cases.push_back(std::bit_cast<float>(0x3f818000u));  // tie, lower is odd -> up
  for (float x : cases) {
    if (std::bit_cast<uint32_t>(x) >> 16 == 0x7f7f) continue;  // reference's "+1" would reach inf
    ASSERT_EQ(fp32_to_bf16(x), bf16_reference(x)) << std::hexfloat << x;
  }
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);
  EXPECT_EQ(fp32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(fp32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to inf
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(std::bit_cast<float>(0x7fffffffu)))));
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(std::bit_cast<float>(0x7f800001u)))));
  // The buffer path agrees with the scalar one.
  const std::vector<float> out = round_trip(Codec::kBf16, cases);
  for (size_t i = 0; i < cases.size(); ++i) ASSERT_EQ(out[i], bf16_to_fp32(fp32_to_bf16(cases[i])));
}

TEST(net_Codec, Int8ErrorWithinHalfStepPerBlock) {
  for (size_t count : {1u, 7u, 255u, 256u, 257u, 1000u, 4096u}) {
    std::vector<float> v = random_values(count, count, 3.0f);
    if (count > 300) v[300] = 100.0f;  // one outlier: only its own block gets a coarse step
    const std::vector<float> out = round_trip(Codec::kInt8, v);
    for (size_t b = 0; b * kInt8BlockValues < count; ++b) {
      const size_t begin = b * kInt8BlockValues, end = std::min(count, begin + kInt8BlockValues);
      float amax = 0;
      for (size_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(v[i]));
      const double step = amax / 127.0;
      for (size_t i = begin; i < end; ++i) {
        ASSERT_LE(std::fabs(static_cast<double>(out[i]) - v[i]), step * 0.5 * (1 + 1e-5)) << count << " " << i;
      }
    }
  }
}

TEST(net_Codec, Int8CodesEqualScalarReference) {
  // The encoder's byte for every value equals nearbyint(clamp(x * 127 / amax)) (ties to even),
  // computed here the plain way; block 0 is built of exact ties (amax = 127, so x * 127 / amax
  // = x, and every x is k + 0.5), the others are random, the last block partial.
  const size_t count = 3 * kInt8BlockValues + 77;
  std::vector<float> v = random_values(count, 5, 4.0f);
  v[0] = 127.0f;
  for (size_t i = 1; i < kInt8BlockValues; ++i) v[i] = static_cast<float>(static_cast<int>(i % 253) - 126) + 0.5f;
  Encoded e = encode_all(Codec::kInt8, v);
  const size_t blocks = (count + kInt8BlockValues - 1) / kInt8BlockValues;
  const int8_t* q = reinterpret_cast<const int8_t*>(e.bytes().data() + 4 * blocks);
  for (size_t b = 0; b < blocks; ++b) {
    const size_t begin = b * kInt8BlockValues, end = std::min(count, begin + kInt8BlockValues);
    float amax = 0;
    for (size_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(v[i]));
    const float inv_scale = 127.0f / amax;
    for (size_t i = begin; i < end; ++i) {
      const float scaled = std::clamp(v[i] * inv_scale, -127.0f, 127.0f);
      ASSERT_EQ(static_cast<int>(q[i]), static_cast<int>(std::nearbyint(scaled))) << "value " << i << " = " << v[i];
    }
  }
}

TEST(net_Codec, Int8IsSymmetricAndExactAtExtremes) {
  std::vector<float> v = random_values(512, 11);
  v[0] = 1.0f;  // the block's max encodes to 127 and decodes close to itself
  std::vector<float> neg(v.size());
  for (size_t i = 0; i < v.size(); ++i) neg[i] = -v[i];
  const std::vector<float> a = round_trip(Codec::kInt8, v);
  const std::vector<float> b = round_trip(Codec::kInt8, neg);
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(a[i], -b[i]);
  EXPECT_NEAR(a[0], 1.0f, 1e-6);
  Encoded e = encode_all(Codec::kInt8, v);
  const int8_t* q = reinterpret_cast<const int8_t*>(e.bytes().data() + 8);
  EXPECT_EQ(q[0], 127);
}

TEST(net_Codec, Int8SpecialBlocks) {
  std::vector<float> v(768, 0.0f);                                  // block 0: zeros
  for (size_t i = 256; i < 512; ++i) v[i] = 1e-38f * (i % 3);        // block 1: subnormal-ish tiny
  for (size_t i = 512; i < 768; ++i) v[i] = 0.5f;                    // block 2: has an inf
  v[600] = std::numeric_limits<float>::infinity();
  const std::vector<float> out = round_trip(Codec::kInt8, v);
  for (size_t i = 0; i < 256; ++i) ASSERT_EQ(out[i], 0.0f);
  for (size_t i = 256; i < 512; ++i) ASSERT_NEAR(out[i], v[i], 2e-38f / 254 * 1.001) << i;
  for (size_t i = 512; i < 768; ++i) ASSERT_TRUE(std::isnan(out[i])) << i;  // non-finite block poisons itself
}

TEST(net_Codec, DecodeAddEqualsDecodeThenAdd) {
  const std::vector<float> v = random_values(1000, 5, 2.0f);
  const std::vector<float> base = random_values(1000, 6, 2.0f);
  for (int c = 0; c < kCodecCount; ++c) {
    const Codec codec = static_cast<Codec>(c);
    Encoded e = encode_all(codec, v);
    std::vector<float> decoded(v.size()), acc = base;
    decode(codec, e.bytes(), decoded);
    decode_add(codec, e.bytes(), acc);
    for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(acc[i], base[i] + decoded[i]) << codec_name(codec) << " " << i;
  }
}

TEST(net_Codec, EncodingIsDeterministic) {
  const std::vector<float> v = random_values(5000, 9);
  for (int c = 0; c < kCodecCount; ++c) {
    Encoded a = encode_all(static_cast<Codec>(c), v);
    Encoded b = encode_all(static_cast<Codec>(c), v);
    ASSERT_EQ(0, std::memcmp(a.bytes().data(), b.bytes().data(), a.size));
  }
}

TEST(net_Codec, PrimeInt8LookupHoldsBinMeans) {
  const std::vector<float> v = random_values(10000, 13);
  Encoded e = encode_all(Codec::kPrimeInt8, v);
  const float* lookup = reinterpret_cast<const float*>(e.bytes().data());
  const uint8_t* q = reinterpret_cast<const uint8_t*>(e.bytes().data() + 1024);
  std::vector<double> sums(256, 0.0);
  std::vector<int> counts(256, 0);
  for (size_t i = 0; i < v.size(); ++i) {
    sums[q[i]] += v[i];
    counts[q[i]] += 1;
  }
  for (int b = 0; b < 256; ++b) {
    if (counts[b] == 0) {
      EXPECT_EQ(lookup[b], 0.0f);
    } else {
      EXPECT_NEAR(lookup[b], sums[b] / counts[b], 1e-5) << b;
    }
  }
  // Uniform data in [-1, 1] has std ~0.577: bins of 6 * 0.577 / 256 ~ 0.0135, all in range.
  const std::vector<float> out = round_trip(Codec::kPrimeInt8, v);
  for (size_t i = 0; i < v.size(); ++i) ASSERT_NEAR(out[i], v[i], 0.0136) << i;
}

}  // namespace
}  // namespace meridian::net
