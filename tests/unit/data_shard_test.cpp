// Token shards and the byte tokenizer: round trips, the exact header layout, and the refusals
// (bad magic, other version, bad token width, truncated or padded files), each naming the file.
#include <gtest/gtest.h>

#include "support/test_util.h"

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/hash.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace meridian::data {
namespace {

using meridian::test_support::TempDir;
using meridian::test_support::read_all;
using meridian::test_support::write_all;

namespace fs = std::filesystem;

void put_u32(std::string& bytes, size_t offset, uint32_t v) { std::memcpy(bytes.data() + offset, &v, 4); }

// Writes a valid shard of `tokens` and returns its bytes.
std::string make_shard(const std::string& path, uint32_t vocab, const std::vector<uint32_t>& tokens) {
  ShardWriter w(path, vocab);
  w.append(tokens.data(), tokens.size());
  EXPECT_EQ(w.count(), tokens.size());
  EXPECT_TRUE(w.finish().is_ok());
  return read_all(path);
}

Status open_error(const std::string& path) {
  auto r = Shard::open(path);
  EXPECT_FALSE(r.is_ok());
  return r.is_ok() ? Status::ok() : r.status();
}

void expect_mentions(const Status& st, const std::vector<std::string>& parts) {
  ASSERT_FALSE(st.is_ok());
  for (const auto& p : parts) EXPECT_NE(st.message().find(p), std::string::npos) << "'" << p << "' not in: " << st.message();
  EXPECT_EQ(st.message().find('\n'), std::string::npos) << st.message();
  EXPECT_FALSE(st.hint().empty()) << st.message();
}

TEST(data_Shard, RoundTripTwoByteTokens) {
  TempDir dir;
  std::vector<uint32_t> tokens;
  SplitMix64 rng(1);
  for (int i = 0; i < 1000; ++i) tokens.push_back(static_cast<uint32_t>(rng.below(ByteTokenizer::kVocab)));
  const std::string path = dir.file("a.tok");
  const std::string bytes = make_shard(path, ByteTokenizer::kVocab, tokens);
  EXPECT_EQ(bytes.size(), kShardHeaderBytes + 2 * tokens.size());
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  auto shard = Shard::open(path);
  ASSERT_TRUE(shard.is_ok()) << shard.status().to_string();
  EXPECT_EQ(shard->size(), tokens.size());
  EXPECT_EQ(shard->token_bytes(), 2u);
  EXPECT_EQ(shard->vocab_size(), ByteTokenizer::kVocab);
  EXPECT_EQ(shard->path(), path);
  for (size_t i = 0; i < tokens.size(); ++i) ASSERT_EQ(shard->token(i), tokens[i]) << i;
  std::vector<int64_t> out(100);
  shard->read(900, 100, out.data());
  for (size_t i = 0; i < 100; ++i) EXPECT_EQ(out[i], tokens[900 + i]);
}

TEST(data_Shard, RoundTripFourByteTokens) {
  TempDir dir;
  const uint32_t vocab = 128256;  // Llama 3
  const std::vector<uint32_t> tokens = {0, 65535, 65536, 128255, 7, 100000};
  const std::string path = dir.file("b.tok");
  const std::string bytes = make_shard(path, vocab, tokens);
  EXPECT_EQ(bytes.size(), kShardHeaderBytes + 4 * tokens.size());
  auto shard = Shard::open(path);
  ASSERT_TRUE(shard.is_ok()) << shard.status().to_string();
  EXPECT_EQ(shard->token_bytes(), 4u);
  EXPECT_EQ(shard->vocab_size(), vocab);
  std::vector<int64_t> out(tokens.size());
  shard->read(0, tokens.size(), out.data());
  for (size_t i = 0; i < tokens.size(); ++i) EXPECT_EQ(out[i], static_cast<int64_t>(tokens[i]));
}

TEST(data_Shard, VocabOf65536StillFitsTwoBytes) {
  TempDir dir;
  const std::vector<uint32_t> tokens = {65535, 1};
  make_shard(dir.file("c.tok"), 65536, tokens);
  auto shard = Shard::open(dir.file("c.tok"));
  ASSERT_TRUE(shard.is_ok());
  EXPECT_EQ(shard->token_bytes(), 2u);
  EXPECT_EQ(shard->token(0), 65535u);
}

TEST(data_Shard, ExactHeaderLayout) {
  TempDir dir;
  const std::string bytes = make_shard(dir.file("h.tok"), 259, {256, 65, 66});
  const std::string expected_header("MRDNTOK\0"           // magic
                                    "\x01\x00\x00\x00"    // version 1
                                    "\x02\x00\x00\x00"    // token_bytes 2
                                    "\x03\0\0\0\0\0\0\0"  // count 3
                                    "\x03\x01\x00\x00"    // vocab_size 259
                                    "\0\0\0\0",           // reserved
                                    32);
  EXPECT_EQ(bytes.substr(0, 32), expected_header);
  EXPECT_EQ(bytes.substr(32), std::string("\x00\x01\x41\x00\x42\x00", 6));
}

TEST(data_Shard, EmptyShardIsValid) {
  TempDir dir;
  make_shard(dir.file("e.tok"), 259, {});
  auto shard = Shard::open(dir.file("e.tok"));
  ASSERT_TRUE(shard.is_ok()) << shard.status().to_string();
  EXPECT_EQ(shard->size(), 0u);
}

TEST(data_Shard, RejectsBadMagic) {
  TempDir dir;
  std::string bytes = make_shard(dir.file("m.tok"), 259, {1, 2, 3});
  bytes[0] = 'X';
  write_all(dir.file("m.tok"), bytes);
  expect_mentions(open_error(dir.file("m.tok")), {dir.file("m.tok"), "not a Meridian token shard"});
  write_all(dir.file("tiny.tok"), "MRD");
  expect_mentions(open_error(dir.file("tiny.tok")), {"tiny.tok", "not a Meridian token shard"});
  write_all(dir.file("empty.tok"), "");
  expect_mentions(open_error(dir.file("empty.tok")), {"empty.tok", "not a Meridian token shard"});
}

TEST(data_Shard, RejectsOtherVersion) {
  TempDir dir;
  std::string bytes = make_shard(dir.file("v.tok"), 259, {1, 2, 3});
  put_u32(bytes, 8, 2);
  write_all(dir.file("v.tok"), bytes);
  const Status st = open_error(dir.file("v.tok"));
  expect_mentions(st, {"v.tok", "version 2", "this build reads version 1"});
  EXPECT_NE(st.hint().find("meridian tokenize"), std::string::npos);
}

TEST(data_Shard, RejectsBadTokenBytes) {
  TempDir dir;
  std::string bytes = make_shard(dir.file("t.tok"), 259, {1, 2, 3});
  put_u32(bytes, 12, 3);
  write_all(dir.file("t.tok"), bytes);
  expect_mentions(open_error(dir.file("t.tok")), {"t.tok", "token_bytes is 3, expected 2 or 4"});
}

TEST(data_Shard, RejectsTruncatedAndPaddedFiles) {
  TempDir dir;
  const std::string bytes = make_shard(dir.file("full.tok"), 259, std::vector<uint32_t>(500, 7));  // 32 + 1000 bytes
  write_all(dir.file("cut.tok"), bytes.substr(0, 1000));
  expect_mentions(open_error(dir.file("cut.tok")), {"cut.tok", "truncated", "500 tokens", "1032 bytes", "file has 1000 bytes"});
  write_all(dir.file("odd.tok"), bytes.substr(0, 1031));
  expect_mentions(open_error(dir.file("odd.tok")), {"odd.tok", "truncated", "file has 1031 bytes"});
  write_all(dir.file("hdr.tok"), bytes.substr(0, 20));
  expect_mentions(open_error(dir.file("hdr.tok")), {"hdr.tok", "truncated"});
  write_all(dir.file("long.tok"), bytes + "xy");
  expect_mentions(open_error(dir.file("long.tok")), {"long.tok", "corrupt", "file has 1034 bytes"});
  std::string huge = bytes;
  const uint64_t count = UINT64_MAX / 2;  // count * token_bytes overflows 64 bits
  std::memcpy(huge.data() + 16, &count, 8);
  write_all(dir.file("huge.tok"), huge);
  expect_mentions(open_error(dir.file("huge.tok")), {"huge.tok", "truncated"});
}

TEST(data_Shard, CheckImageReportsFields) {
  TempDir dir;
  const std::string bytes = make_shard(dir.file("ok.tok"), 300, {299, 0});
  uint64_t count = 0;
  uint32_t token_bytes = 0, vocab = 0;
  ASSERT_TRUE(check_shard_image(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), "img", &count,
                                &token_bytes, &vocab)
                  .is_ok());
  EXPECT_EQ(count, 2u);
  EXPECT_EQ(token_bytes, 2u);
  EXPECT_EQ(vocab, 300u);
}

TEST(data_Shard, OpenMissingFileNamesIt) {
  auto r = Shard::open("/nonexistent/dir/x.tok");
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("/nonexistent/dir/x.tok"), std::string::npos);
}

TEST(data_ByteTokenizer, RoundTripsRandomBytes) {
  ByteTokenizer tok;
  SplitMix64 rng(42);
  for (int trial = 0; trial < 50; ++trial) {
    std::string text(rng.below(300), '\0');
    for (char& c : text) c = static_cast<char>(rng.below(256));
    const std::vector<uint32_t> ids = tok.encode(text);
    ASSERT_EQ(ids.size(), text.size());
    for (size_t i = 0; i < ids.size(); ++i) ASSERT_EQ(ids[i], static_cast<unsigned char>(text[i]));
    EXPECT_EQ(tok.decode(ids), text);
  }
}

TEST(data_ByteTokenizer, SpecialsAndFactory) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 259u);
  EXPECT_EQ(tok.bos_id(), 256u);
  EXPECT_EQ(tok.eos_id(), 257u);
  EXPECT_EQ(tok.decode({ByteTokenizer::kBos, 'h', 'i', ByteTokenizer::kEos, ByteTokenizer::kPad}), "hi");
  EXPECT_EQ(tok.encode("\xc3\xa9"), (std::vector<uint32_t>{0xc3, 0xa9}));  // UTF-8 is bytes, not code points

  auto made = make_tokenizer("bytes");
  ASSERT_TRUE(made.is_ok());
  EXPECT_EQ((*made)->name(), "bytes");
  EXPECT_EQ((*made)->vocab_size(), 259u);
  auto unknown = make_tokenizer("gpt2");
  ASSERT_FALSE(unknown.is_ok());
  EXPECT_NE(unknown.status().message().find("gpt2"), std::string::npos);
  EXPECT_NE(unknown.status().hint().find("bytes"), std::string::npos);
}

}  // namespace
}  // namespace meridian::data
