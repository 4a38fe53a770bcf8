// safetensors: round trips over every dtype, the exact byte layout of a tiny file, and one
// test per defect the reader must refuse (each error names the file, stays on one line and
// carries a hint).
#include <gtest/gtest.h>

#include "support/test_util.h"

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace meridian::io {
namespace {

using meridian::test_support::TempDir;
using meridian::test_support::read_all;
using meridian::test_support::write_all;

namespace fs = std::filesystem;

// 8-byte little-endian length, then the header as given, then the data.
std::string image(const std::string& header, const std::string& data, uint64_t length_override = UINT64_MAX) {
  const uint64_t n = length_override == UINT64_MAX ? header.size() : length_override;
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

// Asserts the parse fails with a one-line message that names the origin, contains `what`, and
// comes with a hint.
void expect_defect(const std::string& bytes, const std::string& what) {
  auto r = SafetensorsFile::parse(bytes, "model.safetensors");
  ASSERT_FALSE(r.is_ok()) << "expected a defect containing '" << what << "'";
  const std::string& msg = r.status().message();
  EXPECT_EQ(msg.rfind("model.safetensors: ", 0), 0u) << msg;
  EXPECT_NE(msg.find(what), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_FALSE(r.status().hint().empty()) << msg;
}

TEST(io_Safetensors, DTypeNamesAndSizes) {
  EXPECT_STREQ(dtype_name(DType::BF16), "BF16");
  EXPECT_EQ(dtype_size(DType::F64), 8u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::BOOL), 1u);
  for (DType d : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32, DType::I16, DType::I8,
                  DType::U8, DType::BOOL}) {
    auto back = dtype_from_name(dtype_name(d));
    ASSERT_TRUE(back.is_ok());
    EXPECT_EQ(*back, d);
  }
  EXPECT_FALSE(dtype_from_name("F8_E4M3").is_ok());
}

TEST(io_Safetensors, RoundTripAllDTypesMetadataEmptyAndScalar) {
  TempDir dir;
  const std::vector<double> f64 = {1.5, -2.25, 3e100};
  const std::vector<float> f32 = {1, 2, 3, 4, 5, 6};
  const std::vector<uint16_t> f16 = {0x3c00, 0xc000};      // 1.0, -2.0 as IEEE half
  const std::vector<uint16_t> bf16 = {0x3f80, 0x4000, 0};  // 1.0, 2.0, 0.0 as bfloat16
  const std::vector<int64_t> i64 = {INT64_MIN, 0, INT64_MAX};
  const std::vector<int32_t> i32 = {-7};
  const std::vector<int16_t> i16 = {-1, 2, -3, 4};
  const std::vector<int8_t> i8 = {-128, 127};
  const std::vector<uint8_t> u8 = {0, 255, 17};
  const std::vector<uint8_t> boolean = {1, 0, 1, 1};
  const float scalar = 42.0f;

  SafetensorsWriter w;
  w.add("z.f64", DType::F64, {3}, f64.data(), f64.size() * 8);
  w.add("a.f32", DType::F32, {2, 3}, f32.data(), f32.size() * 4);
  w.add("f16", DType::F16, {2}, f16.data(), 4);
  w.add("bf16", DType::BF16, {3, 1}, bf16.data(), 6);
  w.add("i64", DType::I64, {3}, i64.data(), 24);
  w.add("i32", DType::I32, {1, 1, 1}, i32.data(), 4);
  w.add("i16", DType::I16, {2, 2}, i16.data(), 8);
  w.add("i8", DType::I8, {2}, i8.data(), 2);
  w.add("u8", DType::U8, {3}, u8.data(), 3);
  w.add("bool", DType::BOOL, {4}, boolean.data(), 4);
  w.add("empty", DType::F32, {0, 3}, nullptr, 0);
  w.add("scalar", DType::F32, {}, &scalar, 4);
  w.set_metadata("format", "meridian-1");
  w.set_metadata("step", "1234");
  const std::string path = dir.file("model.safetensors");
  ASSERT_TRUE(w.write(path).is_ok());
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.is_ok()) << file.status().to_string();
  EXPECT_EQ(file->origin(), path);
  EXPECT_EQ(file->metadata().size(), 2u);
  EXPECT_EQ(file->metadata().at("format"), "meridian-1");
  EXPECT_EQ(file->metadata().at("step"), "1234");
  ASSERT_EQ(file->tensors().size(), 12u);
  for (size_t i = 1; i < file->tensors().size(); ++i)
    EXPECT_LT(file->tensors()[i - 1].name, file->tensors()[i].name) << "tensors() must be sorted by name";

  auto check = [&](const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data, size_t nbytes) {
    const TensorView* t = file->find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->dtype, dtype) << name;
    EXPECT_EQ(t->shape, shape) << name;
    ASSERT_EQ(t->nbytes, nbytes) << name;
    if (nbytes > 0) {
      EXPECT_EQ(std::memcmp(t->data, data, nbytes), 0) << name;
    }
  };
  check("z.f64", DType::F64, {3}, f64.data(), 24);
  check("a.f32", DType::F32, {2, 3}, f32.data(), 24);
  check("f16", DType::F16, {2}, f16.data(), 4);
  check("bf16", DType::BF16, {3, 1}, bf16.data(), 6);
  check("i64", DType::I64, {3}, i64.data(), 24);
  check("i32", DType::I32, {1, 1, 1}, i32.data(), 4);
  check("i16", DType::I16, {2, 2}, i16.data(), 8);
  check("i8", DType::I8, {2}, i8.data(), 2);
  check("u8", DType::U8, {3}, u8.data(), 3);
  check("bool", DType::BOOL, {4}, boolean.data(), 4);
  check("empty", DType::F32, {0, 3}, nullptr, 0);
  check("scalar", DType::F32, {}, &scalar, 4);
  EXPECT_EQ(file->find("scalar")->numel(), 1);
  EXPECT_EQ(file->find("empty")->numel(), 0);
  EXPECT_EQ(file->find("missing"), nullptr);
  // Data is laid out in insertion order: the first tensor added comes first.
  EXPECT_LT(file->find("z.f64")->data, file->find("a.f32")->data);

  // The same bytes parsed from memory give the same tensors.
  auto mem = SafetensorsFile::parse(read_all(path), "mem");
  ASSERT_TRUE(mem.is_ok()) << mem.status().to_string();
  EXPECT_EQ(mem->tensors().size(), 12u);
  EXPECT_EQ(std::memcmp(mem->find("i64")->data, i64.data(), 24), 0);
}

TEST(io_Safetensors, ViewsSurviveMove) {
  const float v[2] = {3.0f, 4.0f};
  TempDir dir;
  SafetensorsWriter w;
  w.add("v", DType::F32, {2}, v, 8);
  ASSERT_TRUE(w.write(dir.file("m.safetensors")).is_ok());
  auto file = SafetensorsFile::open(dir.file("m.safetensors"));
  ASSERT_TRUE(file.is_ok());
  SafetensorsFile moved = std::move(file.value());
  EXPECT_EQ(std::memcmp(moved.find("v")->data, v, 8), 0);
}

TEST(io_Safetensors, ExactByteLayoutOfTinyFile) {
  // Hand-computed: the compact header is 79 bytes, padded with one space to 80 = 0x50, so the
  // data starts 8-byte aligned at offset 88. Floats 1.0 and 2.0 are 0x3f800000, 0x40000000.
  const float values[2] = {1.0f, 2.0f};
  TempDir dir;
  SafetensorsWriter w;
  w.add("a", DType::F32, {2}, values, 8);
  w.set_metadata("k", "v");
  ASSERT_TRUE(w.write(dir.file("tiny.safetensors")).is_ok());

  std::string expected("\x50\x00\x00\x00\x00\x00\x00\x00", 8);
  expected += R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} )";
  expected += std::string("\x00\x00\x80\x3f\x00\x00\x00\x40", 8);
  const std::string actual = read_all(dir.file("tiny.safetensors"));
  EXPECT_EQ(actual.size(), 96u);
  EXPECT_EQ(actual, expected);
}

TEST(io_Safetensors, HeaderIsAlwaysPaddedToEightBytes) {
  TempDir dir;
  const uint8_t byte = 7;
  for (int len = 1; len <= 9; ++len) {
    SafetensorsWriter w;
    w.add(std::string(static_cast<size_t>(len), 'x'), DType::U8, {1}, &byte, 1);
    const std::string path = dir.file("p.safetensors");
    ASSERT_TRUE(w.write(path).is_ok());
    const std::string bytes = read_all(path);
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    EXPECT_EQ(n % 8, 0u) << "name length " << len;
    EXPECT_EQ(bytes.size(), 8 + n + 1);
  }
}

TEST(io_Safetensors, AcceptsHeaderWithoutMetadataOrPadding) {
  // Files from other writers: no __metadata__, no padding, keys in any order.
  const std::string header = R"({"b":{"data_offsets":[2,3],"shape":[1],"dtype":"U8"},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  auto r = SafetensorsFile::parse(image(header, "xyz"), "other.safetensors");
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_TRUE(r->metadata().empty());
  ASSERT_EQ(r->tensors().size(), 2u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(r->find("a")->data), 2), "xy");
  EXPECT_EQ(*r->find("b")->data, 'z');
}

TEST(io_Safetensors, EmptyHeaderObjectIsAValidEmptyFile) {
  auto r = SafetensorsFile::parse(image("{}      ", ""), "empty.safetensors");
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_TRUE(r->tensors().empty());
}

const std::string kGoodHeader = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";

TEST(io_Safetensors, RejectsTooShortFile) {
  expect_defect("", "too short");
  expect_defect(std::string("\x10\x00\x00", 3), "too short");
}

TEST(io_Safetensors, RejectsTruncatedData) {
  expect_defect(image(kGoodHeader, std::string(10, '\0')), "truncated: header says 16 bytes of tensor data, file has 10");
}

TEST(io_Safetensors, RejectsBadHeaderLength) {
  expect_defect(image(kGoodHeader, std::string(16, '\0'), 1ull << 40), "bad header length");
  expect_defect(image(kGoodHeader, std::string(16, '\0'), kGoodHeader.size() + 17), "bad header length");
  expect_defect(image(kGoodHeader, std::string(16, '\0'), UINT64_MAX - 1), "bad header length");
}

TEST(io_Safetensors, RejectsBadJson) {
  expect_defect(image(R"({"w":{"dtype":"F32",)", ""), "bad JSON header");
  expect_defect(image("not json", ""), "bad JSON header");
  expect_defect(image("[1, 2, 3]", ""), "not a JSON object");
  expect_defect(image(R"({"w": 5})", ""), "not a JSON object");
}

TEST(io_Safetensors, RejectsUnknownDType) {
  expect_defect(image(R"({"w":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", "ab"), "unknown dtype \"F8\"");
  expect_defect(image(R"({"w":{"dtype":3,"shape":[2],"data_offsets":[0,2]}})", "ab"), "dtype is not a string");
}

TEST(io_Safetensors, RejectsBadShape) {
  expect_defect(image(R"({"w":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}})", "ab"), "not a non-negative integer");
  expect_defect(image(R"({"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,2]}})", "ab"), "not a non-negative integer");
  expect_defect(image(R"({"w":{"dtype":"U8","shape":2,"data_offsets":[0,2]}})", "ab"), "shape is not an array");
  expect_defect(image(R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,2]}})", "ab"),
                "overflows");
  expect_defect(image(R"({"w":{"dtype":"U8","shape":[2]}})", "ab"), "needs dtype, shape and data_offsets");
}

TEST(io_Safetensors, RejectsOffsetsOutOfRange) {
  expect_defect(image(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[2,0]}})", "ab"), "begin > end");
  expect_defect(image(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[1000,1002]}})", "ab"),
                "header says 1002 bytes of tensor data, file has 2");
  expect_defect(image(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[-1,1]}})", "ab"), "not non-negative integers");
  expect_defect(image(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0]}})", "ab"), "not a [begin, end] pair");
  expect_defect(image(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]}})", "ab"),
                "truncated");
}

TEST(io_Safetensors, RejectsSizeMismatch) {
  expect_defect(image(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')),
                "size mismatch: F32 [3] needs 12 bytes, data_offsets [0,8] span 8");
}

TEST(io_Safetensors, RejectsOverlappingTensors) {
  expect_defect(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                      std::string(12, '\0')),
                "overlapping tensors");
  // Two tensors on the same bytes.
  expect_defect(image(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})",
                      std::string(4, '\0')),
                "overlapping tensors");
}

TEST(io_Safetensors, RejectsUncoveredData) {
  expect_defect(image(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})", "abcd"), "gap in data section");
  expect_defect(image(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", "abcd"), "data section not covered");
}

TEST(io_Safetensors, RejectsBadMetadata) {
  expect_defect(image(R"({"__metadata__":{"step":5}})", ""), "__metadata__ value of \"step\" is not a string");
  expect_defect(image(R"({"__metadata__":["x"]})", ""), "__metadata__ is not a JSON object");
}

TEST(io_Safetensors, OpenNamesTheFileOnDefects) {
  TempDir dir;
  const float v[4] = {1, 2, 3, 4};
  SafetensorsWriter w;
  w.add("w", DType::F32, {4}, v, 16);
  const std::string path = dir.file("ckpt.safetensors");
  ASSERT_TRUE(w.write(path).is_ok());
  std::string bytes = read_all(path);
  write_all(path, bytes.substr(0, bytes.size() - 5));  // an interrupted copy
  auto r = SafetensorsFile::open(path);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().message().rfind(path + ": truncated", 0), 0u) << r.status().message();
  EXPECT_NE(r.status().hint().find("restore"), std::string::npos);

  auto missing = SafetensorsFile::open(dir.file("missing.safetensors"));
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.status().message().find("missing.safetensors"), std::string::npos);
}

TEST(io_Safetensors, WriteReplacesAtomicallyAndFailsCleanly) {
  TempDir dir;
  const uint8_t a[1] = {1}, b[2] = {2, 3};
  const std::string path = dir.file("x.safetensors");
  SafetensorsWriter w1;
  w1.add("t", DType::U8, {1}, a, 1);
  ASSERT_TRUE(w1.write(path).is_ok());
  SafetensorsWriter w2;
  w2.add("t", DType::U8, {2}, b, 2);
  ASSERT_TRUE(w2.write(path).is_ok());
  auto r = SafetensorsFile::open(path);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->find("t")->nbytes, 2u);

  const Status bad = w2.write(dir.file("no/such/dir/x.safetensors"));
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.message().find("x.safetensors.tmp"), std::string::npos) << bad.message();
}

}  // namespace
}  // namespace meridian::io
