// tokenize_files with a BPE tokenizer on several threads: the shards are byte-identical for every
// thread count, documents decode back to their text, and progress is reported up to done.
#include <gtest/gtest.h>

#include "support/test_util.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/hash.h"
#include "data/bpe.h"
#include "data/shard.h"
#include "data/tokenize.h"

namespace meridian::data {
namespace {

namespace fs = std::filesystem;

std::string ranks_line(const std::string& bytes, int rank) {
  return meridian::test_support::base64(bytes) + " " + std::to_string(rank) + "\n";
}

std::unique_ptr<BpeTokenizer> small_bpe() {
  std::string ranks;
  for (int b = 0; b < 256; ++b) ranks += ranks_line(std::string(1, static_cast<char>(b)), b);
  const std::vector<std::string> extra = {"th", "he", "the", " t", " the", "in", "ing", " a", "an", "and", " and", "  "};
  for (size_t i = 0; i < extra.size(); ++i) ranks += ranks_line(extra[i], 256 + static_cast<int>(i));
  auto tok = BpeTokenizer::from_tiktoken(ranks, "small", llama3_special_tokens());
  EXPECT_TRUE(tok.is_ok()) << tok.status().to_string();
  return std::move(tok.value());
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(data_BpeTokenize, ShardsIdenticalForEveryThreadCountWithProgress) {
  const fs::path dir = fs::temp_directory_path() / ("meridian_bpe_tokenize_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  // ~3 MB of documents of varied length, so several batches and thread hand-offs happen.
  SplitMix64 rng(1);
  const std::vector<std::string> words = {"the", "and", "thing", "ring", " ", "  ", "\n", "caf\xc3\xa9", "\xff", "<|eot_id|>", "123"};
  std::vector<std::string> docs;
  for (int d = 0; d < 3000; ++d) {
    std::string text = "doc" + std::to_string(d);  // never blank, so never skipped
    const uint64_t n = 1 + rng.below(d % 100 == 0 ? 20000 : 400);
    for (uint64_t k = 0; k < n; ++k) text += words[rng.below(words.size())] + " ";
    docs.push_back(text);
  }
  {
    std::ofstream out(dir / "docs.txt", std::ios::binary);
    for (const auto& d : docs) out << d << "\n%\n";
  }
  auto tok = small_bpe();
  ASSERT_TRUE(tok);

  std::vector<std::string> first_shards;
  for (int threads : {1, 3}) {
    const fs::path out = dir / ("out" + std::to_string(threads));
    TokenizeOptions options;
    options.doc_separator = "%";
    options.threads = threads;
    options.shard_tokens = 1 << 18;
    options.val_fraction = 0.1;
    std::vector<TokenizeProgress> reports;
    options.on_progress = [&](const TokenizeProgress& p) { reports.push_back(p); };
    auto stats = tokenize_files({(dir / "docs.txt").string()}, out.string(), *tok, options);
    ASSERT_TRUE(stats.is_ok()) << stats.status().to_string();
    EXPECT_EQ(stats->documents, docs.size());
    ASSERT_GE(reports.size(), 2u) << "one report per batch and a final one";
    EXPECT_TRUE(reports.back().done);
    EXPECT_EQ(reports.back().bytes_done, reports.back().bytes_total);
    EXPECT_EQ(reports.back().tokens, stats->train_tokens + stats->val_tokens);
    for (size_t i = 1; i < reports.size(); ++i) EXPECT_GE(reports[i].bytes_done, reports[i - 1].bytes_done);

    std::vector<std::string> shards;
    for (const char* split : {"train", "val"})
      for (int s = 0;; ++s) {
        char name[32];
        std::snprintf(name, sizeof(name), "shard_%05d.tok", s);
        if (!fs::exists(out / split / name)) break;
        shards.push_back(read_all(out / split / name));
      }
    ASSERT_GT(shards.size(), 2u);
    if (first_shards.empty()) {
      first_shards = shards;
      // The first train shard decodes to its documents (BOS-separated), in order.
      auto shard = Shard::open((out / "train" / "shard_00000.tok").string());
      ASSERT_TRUE(shard.is_ok());
      std::vector<uint32_t> ids;
      std::vector<std::string> decoded;
      for (uint64_t i = 0; i < shard->size(); ++i) {
        const uint32_t t = shard->token(i);
        if (t == tok->bos_id() && i > 0) {
          decoded.push_back(tok->decode(ids));
          ids.clear();
        } else if (t != tok->bos_id()) {
          ids.push_back(t);
        }
      }
      ASSERT_GE(decoded.size(), 5u);
      for (size_t k = 0; k < 5; ++k) EXPECT_EQ(decoded[k], docs[k] + "\n") << k;  // docs 0..4 are train docs
    } else {
      EXPECT_EQ(shards, first_shards) << "output depends on the thread count";
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace meridian::data
