// TokenLoader: windows and targets, per-epoch permutations, seeding, bit-exact cursor restore,
// streams that cross shard boundaries, the refusals at open, and the unigram entropy.
//
// Most tests write shards whose token at global stream index i is i itself (vocab large enough),
// so every window can be checked arithmetically: sequence s holds s*T .. s*T + T.
#include <gtest/gtest.h>

#include "support/test_util.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/shard.h"

namespace meridian::data {
namespace {

using meridian::test_support::TempDir;
using meridian::test_support::read_all;
using meridian::test_support::write_all;

namespace fs = std::filesystem;

constexpr uint32_t kVocab = 1u << 20;

// Writes a shard holding the tokens first, first + 1, ..., first + n - 1.
void write_counting_shard(const std::string& path, uint32_t first, uint32_t n, uint32_t vocab = kVocab) {
  std::vector<uint32_t> tokens(n);
  std::iota(tokens.begin(), tokens.end(), first);
  ShardWriter w(path, vocab);
  w.append(tokens.data(), tokens.size());
  ASSERT_TRUE(w.finish().is_ok());
}

TokenLoader open_ok(const std::string& path, int64_t T, uint64_t seed) {
  auto r = TokenLoader::open(path, T, seed);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return std::move(r.value());
}

// The next `n` sequence indices, read one per batch row, each checked against its window.
std::vector<uint64_t> draw(TokenLoader& loader, uint64_t n) {
  const int64_t T = loader.seq_len();
  std::vector<int64_t> in(static_cast<size_t>(T)), tg(static_cast<size_t>(T));
  std::vector<uint64_t> seqs;
  for (uint64_t k = 0; k < n; ++k) {
    const uint64_t s = loader.peek_sequence();
    loader.next_batch(1, in.data(), tg.data());
    for (int64_t t = 0; t < T; ++t) {
      EXPECT_EQ(in[t], static_cast<int64_t>(s) * T + t) << "sequence " << s << " position " << t;
      EXPECT_EQ(tg[t], in[t] + 1) << "targets must be inputs shifted by one";
    }
    seqs.push_back(s);
  }
  return seqs;
}

TEST(data_Loader, SequencesAreWindowsOfTPlusOneWithStrideT) {
  TempDir dir;
  write_counting_shard(dir.file("a.tok"), 0, 101);
  TokenLoader loader = open_ok(dir.file("a.tok"), 10, 7);
  EXPECT_EQ(loader.num_tokens(), 101u);
  EXPECT_EQ(loader.num_sequences(), 10u);  // floor((101 - 1) / 10)
  EXPECT_EQ(loader.vocab_size(), kVocab);
  EXPECT_EQ(loader.seq_len(), 10);
  draw(loader, 25);  // checks every window it reads

  // One token fewer and the last window no longer fits.
  write_counting_shard(dir.file("b.tok"), 0, 100);
  EXPECT_EQ(open_ok(dir.file("b.tok"), 10, 7).num_sequences(), 9u);
}

TEST(data_Loader, BatchRowsAreRowMajor) {
  TempDir dir;
  write_counting_shard(dir.file("a.tok"), 0, 1000);
  TokenLoader loader = open_ok(dir.file("a.tok"), 8, 3);
  const int64_t B = 4, T = 8;
  std::vector<uint64_t> expected;
  TokenLoader probe = open_ok(dir.file("a.tok"), 8, 3);
  for (int i = 0; i < B; ++i) expected.push_back(draw(probe, 1)[0]);
  std::vector<int64_t> in(B * T), tg(B * T);
  loader.next_batch(B, in.data(), tg.data());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      EXPECT_EQ(in[b * T + t], static_cast<int64_t>(expected[b]) * T + t);
      EXPECT_EQ(tg[b * T + t], static_cast<int64_t>(expected[b]) * T + t + 1);
    }
  EXPECT_EQ(loader.cursor(), (LoaderCursor{0, 4}));
}

TEST(data_Loader, EachEpochIsAPermutation) {
  TempDir dir;
  write_counting_shard(dir.file("a.tok"), 0, 1 + 37 * 5);
  TokenLoader loader = open_ok(dir.file("a.tok"), 5, 11);
  ASSERT_EQ(loader.num_sequences(), 37u);
  std::vector<std::vector<uint64_t>> epochs;
  for (int e = 0; e < 3; ++e) {
    EXPECT_EQ(loader.cursor(), (LoaderCursor{static_cast<uint64_t>(e), 0}));
    std::vector<uint64_t> order = draw(loader, 37);
    std::vector<uint64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    std::vector<uint64_t> all(37);
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(sorted, all) << "epoch " << e << " must visit every sequence exactly once";
    epochs.push_back(order);
  }
  EXPECT_NE(epochs[0], epochs[1]) << "epochs must be shuffled differently";
  EXPECT_NE(epochs[1], epochs[2]);
  std::vector<uint64_t> identity(37);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(epochs[0], identity) << "the order must be shuffled";
}

TEST(data_Loader, SameSeedSameOrderDifferentSeedDifferentOrder) {
  TempDir dir;
  write_counting_shard(dir.file("a.tok"), 0, 4001);
  TokenLoader a = open_ok(dir.file("a.tok"), 40, 1234);
  TokenLoader b = open_ok(dir.file("a.tok"), 40, 1234);
  TokenLoader c = open_ok(dir.file("a.tok"), 40, 1235);
  const auto order_a = draw(a, 250);  // two and a half epochs
  EXPECT_EQ(order_a, draw(b, 250));
  EXPECT_NE(order_a, draw(c, 250));
}

TEST(data_Loader, CursorRestoreGivesIdenticalBatches) {
  TempDir dir;
  write_counting_shard(dir.file("a.tok"), 0, 3001);
  const int64_t B = 3, T = 30;  // 100 sequences
  TokenLoader original = open_ok(dir.file("a.tok"), T, 99);
  std::vector<int64_t> in(B * T), tg(B * T);
  for (int i = 0; i < 40; ++i) original.next_batch(B, in.data(), tg.data());  // 120 sequences: into epoch 1
  const LoaderCursor saved = original.cursor();
  EXPECT_EQ(saved, (LoaderCursor{1, 20}));

  TokenLoader restored = open_ok(dir.file("a.tok"), T, 99);
  restored.set_cursor(saved);
  EXPECT_EQ(restored.cursor(), saved);
  std::vector<int64_t> in2(B * T), tg2(B * T);
  for (int i = 0; i < 50; ++i) {  // crosses into epoch 2
    original.next_batch(B, in.data(), tg.data());
    restored.next_batch(B, in2.data(), tg2.data());
    ASSERT_EQ(in, in2) << "batch " << i;
    ASSERT_EQ(tg, tg2) << "batch " << i;
  }
  EXPECT_EQ(original.cursor(), restored.cursor());
  EXPECT_EQ(original.cursor(), (LoaderCursor{2, 70}));

  // Restoring an earlier cursor into a loader that has moved on also works.
  restored.set_cursor({0, 5});
  TokenLoader fresh = open_ok(dir.file("a.tok"), T, 99);
  draw(fresh, 5);
  EXPECT_EQ(restored.peek_sequence(), fresh.peek_sequence());
}

// DiLoCo's data policy: ranks of a world W that start from the same cursor read disjoint
// sequences, end at the same cursor, and together read exactly what one node reads.
TEST(data_Loader, ShardsOfAWorldAreDisjointAndTogetherTheSingleNodeStream) {
  TempDir dir;
  write_counting_shard(dir.file("a.tok"), 0, 3001);
  const int64_t B = 2, T = 30;  // 100 sequences
  for (int W : {1, 2, 3, 5}) {
    TokenLoader single = open_ok(dir.file("a.tok"), T, 7);
    single.skip(13);  // a cursor mid-epoch, as after earlier rounds
    const LoaderCursor start = single.cursor();
    const int steps = 9;  // crosses into the next epoch for W >= 5
    std::vector<std::vector<uint64_t>> by_rank(W);
    std::vector<LoaderCursor> ends;
    for (int r = 0; r < W; ++r) {
      TokenLoader node = open_ok(dir.file("a.tok"), T, 7);
      node.set_cursor(start);
      node.set_shard(r, W);
      std::vector<int64_t> in(B * T), tg(B * T);
      std::vector<uint64_t> seqs(B);
      for (int s = 0; s < steps; ++s) {
        node.next_batch(B, in.data(), tg.data(), seqs.data());
        for (int64_t b = 0; b < B; ++b) {
          EXPECT_EQ(in[b * T], static_cast<int64_t>(seqs[b]) * T) << "the row holds the reported sequence";
          by_rank[r].push_back(seqs[b]);
        }
      }
      ends.push_back(node.cursor());
    }
    for (int r = 1; r < W; ++r) EXPECT_EQ(ends[r], ends[0]) << "every rank ends at the same cursor, W=" << W;
    // Row k of rank r is draw k * W + r of the single-node stream.
    const std::vector<uint64_t> all = draw(single, static_cast<uint64_t>(steps * B * W));
    for (int r = 0; r < W; ++r)
      for (size_t k = 0; k < by_rank[r].size(); ++k) EXPECT_EQ(by_rank[r][k], all[k * W + r]) << "W=" << W << " rank " << r;
    EXPECT_EQ(single.cursor(), ends[0]);
    if (13 + steps * B * W <= 100) {  // within one epoch: no sequence read twice
      std::set<uint64_t> seen;
      for (const auto& seqs : by_rank)
        for (uint64_t s : seqs) EXPECT_TRUE(seen.insert(s).second) << "sequence " << s << " read by two ranks, W=" << W;
    }
  }
}

TEST(data_Loader, StreamCrossesShardBoundariesInNameOrder) {
  TempDir dir;
  // Written out of name order, with a non-shard file and an empty shard in between: the loader
  // must read shard_0, shard_1 (empty), shard_2, shard_3 as one stream 0 .. 24.
  write_counting_shard(dir.file("shard_3.tok"), 20, 5);
  write_counting_shard(dir.file("shard_0.tok"), 0, 7);
  write_counting_shard(dir.file("shard_1.tok"), 7, 0);
  write_counting_shard(dir.file("shard_2.tok"), 7, 13);
  { std::ofstream(dir.file("README.txt")) << "not a shard"; }
  TokenLoader loader = open_ok(dir.path(), 4, 5);
  EXPECT_EQ(loader.num_tokens(), 25u);
  EXPECT_EQ(loader.num_sequences(), 6u);
  const auto seqs = draw(loader, 12);  // every window, including [4, 8] and [16, 20], is checked
  EXPECT_EQ(std::set<uint64_t>(seqs.begin(), seqs.end()).size(), 6u);
}

TEST(data_Loader, RefusesBadInputs) {
  TempDir dir;
  auto none = TokenLoader::open(dir.path(), 8, 0);
  ASSERT_FALSE(none.is_ok());
  EXPECT_NE(none.status().message().find("no *.tok shards"), std::string::npos) << none.status().message();

  write_counting_shard(dir.file("a.tok"), 0, 8);
  auto short_stream = TokenLoader::open(dir.path(), 8, 0);
  ASSERT_FALSE(short_stream.is_ok());
  EXPECT_NE(short_stream.status().message().find("fewer than one sequence"), std::string::npos);
  EXPECT_TRUE(TokenLoader::open(dir.path(), 7, 0).is_ok());
  EXPECT_FALSE(TokenLoader::open(dir.path(), 0, 0).is_ok());

  write_counting_shard(dir.file("b.tok"), 0, 8, 259);
  auto mixed = TokenLoader::open(dir.path(), 4, 0);
  ASSERT_FALSE(mixed.is_ok());
  EXPECT_NE(mixed.status().message().find("b.tok: vocab_size 259 differs"), std::string::npos) << mixed.status().message();

  fs::remove(dir.file("b.tok"));
  { std::ofstream(dir.file("c.tok")) << "garbage that is not a shard at all"; }
  auto corrupt = TokenLoader::open(dir.path(), 4, 0);
  ASSERT_FALSE(corrupt.is_ok());
  EXPECT_NE(corrupt.status().message().find("c.tok: not a Meridian token shard"), std::string::npos);

  auto missing = TokenLoader::open(dir.file("missing.tok"), 4, 0);
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.status().message().find("missing.tok"), std::string::npos);
}

TEST(data_Loader, UnigramEntropyOfKnownDistributions) {
  TempDir dir;
  // Uniform over 4 tokens: ln 4.
  {
    std::vector<uint32_t> tokens;
    for (int i = 0; i < 400; ++i) tokens.push_back(static_cast<uint32_t>(i % 4));
    ShardWriter w(dir.file("u.tok"), 259);
    w.append(tokens.data(), tokens.size());
    ASSERT_TRUE(w.finish().is_ok());
    EXPECT_NEAR(open_ok(dir.file("u.tok"), 8, 0).unigram_entropy_nats(), std::log(4.0), 1e-12);
  }
  // p = (1/2, 1/4, 1/4), split across two shards: 1.5 ln 2.
  {
    fs::create_directories(dir.file("two"));
    const std::vector<uint32_t> first = {9, 9, 9, 9, 3, 3}, second = {9, 9, 9, 9, 5, 5, 5, 5, 3, 3};
    ShardWriter w1(dir.file("two/a.tok"), 259), w2(dir.file("two/b.tok"), 259);
    w1.append(first.data(), first.size());
    w2.append(second.data(), second.size());
    ASSERT_TRUE(w1.finish().is_ok());
    ASSERT_TRUE(w2.finish().is_ok());
    EXPECT_NEAR(open_ok(dir.file("two"), 4, 0).unigram_entropy_nats(), 1.5 * std::log(2.0), 1e-12);
  }
  // A single repeated token carries no information.
  {
    std::vector<uint32_t> tokens(50, 7);
    ShardWriter w(dir.file("c.tok"), 259);
    w.append(tokens.data(), tokens.size());
    ASSERT_TRUE(w.finish().is_ok());
    EXPECT_NEAR(open_ok(dir.file("c.tok"), 8, 0).unigram_entropy_nats(), 0.0, 1e-15);
  }
}

}  // namespace
}  // namespace meridian::data
