// tokenize_files: text with separator lines, JSON lines, the malformed-line error with its line
// number, the deterministic val split, shard rollover, and the refusals.
#include <gtest/gtest.h>

#include "support/test_util.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/shard.h"
#include "data/tokenize.h"

namespace meridian::data {
namespace {

using meridian::test_support::TempDir;
using meridian::test_support::read_all;
using meridian::test_support::write_all;

namespace fs = std::filesystem;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// The documents of a shard, split at BOS and decoded.
std::vector<std::string> documents(const std::string& shard_path) {
  auto shard = Shard::open(shard_path);
  EXPECT_TRUE(shard.is_ok()) << shard.status().to_string();
  if (!shard.is_ok()) return {};
  ByteTokenizer tok;
  std::vector<std::string> docs;
  std::vector<uint32_t> current;
  for (uint64_t i = 0; i < shard->size(); ++i) {
    const uint32_t t = shard->token(i);
    if (i == 0) {
      EXPECT_EQ(t, tok.bos_id()) << "a shard must start with BOS";
    }
    if (t == tok.bos_id()) {
      if (i > 0) docs.push_back(tok.decode(current));
      current.clear();
    } else {
      current.push_back(t);
    }
  }
  if (shard->size() > 0) docs.push_back(tok.decode(current));
  return docs;
}

Result<TokenizeStats> run(const std::vector<std::string>& inputs, const std::string& out, TokenizeOptions options = {}) {
  ByteTokenizer tok;
  return tokenize_files(inputs, out, tok, options);
}

TEST(data_Tokenize, TextWithSeparatorLines) {
  TempDir dir;
  // Fortune-file style: documents between lines "%"; an empty document and a CRLF separator.
  write_text(dir.file("fortunes"), "first\nline two\n%\nsecond\n%\n%\r\nthird\n%\n");
  TokenizeOptions options;
  options.doc_separator = "%";
  auto stats = run({dir.file("fortunes")}, dir.file("out"), options);
  ASSERT_TRUE(stats.is_ok()) << stats.status().to_string();
  EXPECT_EQ(stats->documents, 3u);
  EXPECT_EQ(stats->bytes_in, 37u);
  EXPECT_EQ(stats->shards, 1);
  EXPECT_EQ(stats->val_tokens, 0u);
  const std::vector<std::string> expected = {"first\nline two\n", "second\n", "third\n"};
  EXPECT_EQ(documents(dir.file("out/train/shard_00000.tok")), expected);
  EXPECT_EQ(stats->train_tokens, 15u + 7u + 6u + 3u);  // bytes + one BOS each
  EXPECT_FALSE(fs::exists(dir.file("out/val")));
}

TEST(data_Tokenize, TextWithoutSeparatorIsOneDocumentPerFile) {
  TempDir dir;
  write_text(dir.file("a.txt"), "alpha\n%\nbeta");
  write_text(dir.file("b.txt"), "gamma\n");
  auto stats = run({dir.file("a.txt"), dir.file("b.txt")}, dir.file("out"));
  ASSERT_TRUE(stats.is_ok()) << stats.status().to_string();
  EXPECT_EQ(stats->documents, 2u);
  const std::vector<std::string> expected = {"alpha\n%\nbeta", "gamma\n"};
  EXPECT_EQ(documents(dir.file("out/train/shard_00000.tok")), expected);
}

TEST(data_Tokenize, JsonLines) {
  TempDir dir;
  write_text(dir.file("d.jsonl"), "{\"text\": \"hello\", \"id\": 1}\n\n{\"text\": \"w\\u00f6rld\\n\"}\n{\"text\": \"\"}\n");
  auto stats = run({dir.file("d.jsonl")}, dir.file("out"));
  ASSERT_TRUE(stats.is_ok()) << stats.status().to_string();
  EXPECT_EQ(stats->documents, 2u);  // the empty text is skipped
  const std::vector<std::string> expected = {"hello", "w\xc3\xb6rld\n"};
  EXPECT_EQ(documents(dir.file("out/train/shard_00000.tok")), expected);

  // Another field name.
  write_text(dir.file("e.jsonl"), "{\"content\": \"abc\"}\n");
  TokenizeOptions options;
  options.text_field = "content";
  auto other = run({dir.file("e.jsonl")}, dir.file("out2"), options);
  ASSERT_TRUE(other.is_ok()) << other.status().to_string();
  EXPECT_EQ(documents(dir.file("out2/train/shard_00000.tok")), std::vector<std::string>{"abc"});
}

TEST(data_Tokenize, MalformedJsonLineNamesFileAndLine) {
  TempDir dir;
  write_text(dir.file("bad.jsonl"), "{\"text\": \"ok\"}\n{\"text\": \"also ok\"}\n\n{\"text\": \"broken\n{\"text\": \"never\"}\n");
  auto stats = run({dir.file("bad.jsonl")}, dir.file("out"));
  ASSERT_FALSE(stats.is_ok());
  EXPECT_NE(stats.status().message().find(dir.file("bad.jsonl") + ":4: malformed JSON"), std::string::npos)
      << stats.status().message();
  EXPECT_FALSE(stats.status().hint().empty());

  write_text(dir.file("nofield.jsonl"), "{\"text\": \"ok\"}\n{\"body\": \"x\"}\n");
  auto missing = run({dir.file("nofield.jsonl")}, dir.file("out2"));
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.status().message().find("nofield.jsonl:2: no string field 'text'"), std::string::npos)
      << missing.status().message();

  write_text(dir.file("array.jsonl"), "[1, 2]\n");
  auto array = run({dir.file("array.jsonl")}, dir.file("out3"));
  ASSERT_FALSE(array.is_ok());
  EXPECT_NE(array.status().message().find("array.jsonl:1: line is not a JSON object"), std::string::npos);
}

TEST(data_Tokenize, ValSplitTakesEveryKthDocument) {
  TempDir dir;
  std::string jsonl;
  for (int d = 0; d < 10; ++d) jsonl += "{\"text\": \"doc" + std::to_string(d) + "\"}\n";
  write_text(dir.file("docs.jsonl"), jsonl);
  TokenizeOptions options;
  options.val_fraction = 0.25;  // k = 4: documents 3 and 7 (0-based)
  auto stats = run({dir.file("docs.jsonl")}, dir.file("out"), options);
  ASSERT_TRUE(stats.is_ok()) << stats.status().to_string();
  EXPECT_EQ(stats->documents, 10u);
  EXPECT_EQ(stats->shards, 2);
  EXPECT_EQ(stats->val_tokens, 2u * 5u);
  EXPECT_EQ(stats->train_tokens, 8u * 5u);
  EXPECT_EQ(documents(dir.file("out/val/shard_00000.tok")), (std::vector<std::string>{"doc3", "doc7"}));
  EXPECT_EQ(documents(dir.file("out/train/shard_00000.tok")),
            (std::vector<std::string>{"doc0", "doc1", "doc2", "doc4", "doc5", "doc6", "doc8", "doc9"}));
}

TEST(data_Tokenize, ShardsRollOverWithoutSplittingDocuments) {
  TempDir dir;
  std::string text;
  for (int d = 0; d < 20; ++d) text += "document number " + std::to_string(d) + "\n%\n";
  write_text(dir.file("many.txt"), text);
  TokenizeOptions options;
  options.doc_separator = "%";
  options.shard_tokens = 50;  // each document is 19 or 20 tokens: three per shard
  auto stats = run({dir.file("many.txt")}, dir.file("out"), options);
  ASSERT_TRUE(stats.is_ok()) << stats.status().to_string();
  EXPECT_EQ(stats->documents, 20u);
  EXPECT_EQ(stats->shards, 7);
  std::vector<std::string> all;
  uint64_t tokens = 0;
  for (int s = 0; s < stats->shards; ++s) {
    char name[64];
    std::snprintf(name, sizeof(name), "out/train/shard_%05d.tok", s);
    auto docs = documents(dir.file(name));
    EXPECT_LE(docs.size(), 3u);
    all.insert(all.end(), docs.begin(), docs.end());
    tokens += Shard::open(dir.file(name))->size();
  }
  ASSERT_EQ(all.size(), 20u);
  for (int d = 0; d < 20; ++d) EXPECT_EQ(all[d], "document number " + std::to_string(d) + "\n");
  EXPECT_EQ(tokens, stats->train_tokens);

  // The output is a dataset the loader reads.
  auto loader = TokenLoader::open(dir.file("out/train"), 16, 0);
  ASSERT_TRUE(loader.is_ok()) << loader.status().to_string();
  EXPECT_EQ(loader->num_tokens(), stats->train_tokens);
  EXPECT_EQ(loader->vocab_size(), ByteTokenizer::kVocab);
}

TEST(data_Tokenize, RefusesBadOptionsAndStaleOutput) {
  TempDir dir;
  write_text(dir.file("a.txt"), "text");
  TokenizeOptions bad;
  bad.shard_tokens = 0;
  bad.val_fraction = 1.5;
  auto r = run({dir.file("a.txt"), dir.file("missing.txt")}, dir.file("out"), bad);
  ASSERT_FALSE(r.is_ok());
  const std::string& msg = r.status().message();
  EXPECT_NE(msg.find("shard_tokens"), std::string::npos) << msg;
  EXPECT_NE(msg.find("val_fraction"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing.txt"), std::string::npos) << msg;

  ASSERT_TRUE(run({dir.file("a.txt")}, dir.file("out")).is_ok());
  auto again = run({dir.file("a.txt")}, dir.file("out"));
  ASSERT_FALSE(again.is_ok());
  EXPECT_NE(again.status().message().find("already contains token shards"), std::string::npos);
}

}  // namespace
}  // namespace meridian::data
