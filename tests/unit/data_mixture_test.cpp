// MixtureLoader: proportions within 1% over 10^5 sequences (INTELLECT-1's 55:10:20:10:5 mix),
// deterministic order, exact cursor save/restore (also through JSON), disjoint and complete
// streams across ranks, and the refusals (bad weights, names, ranks, vocabularies, cursors).
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "data/mixture.h"
#include "data/shard.h"

namespace meridian::data {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kSeqLen = 8;
constexpr uint32_t kVocab = 1u << 20;

class MixtureData {
 public:
  // Source i has `sequences[i]` sequences of kSeqLen; token value = i * 100000 + position, so a
  // row's first input token identifies its source and sequence.
  explicit MixtureData(const std::vector<uint64_t>& sequences, uint32_t vocab_of_last = kVocab) {
    static std::atomic<int> counter{0};
    root_ = fs::temp_directory_path() / ("meridian_mixture_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    for (size_t i = 0; i < sequences.size(); ++i) {
      const fs::path dir = root_ / ("src" + std::to_string(i));
      fs::create_directories(dir);
      const uint32_t vocab = i + 1 == sequences.size() ? vocab_of_last : kVocab;
      ShardWriter writer((dir / "shard_00000.tok").string(), vocab);
      std::vector<uint32_t> tokens(sequences[i] * kSeqLen + 1);
      for (size_t t = 0; t < tokens.size(); ++t) tokens[t] = static_cast<uint32_t>((i * 100000 + t) % vocab);
      writer.append(tokens.data(), tokens.size());
      EXPECT_TRUE(writer.finish().is_ok());
      paths_.push_back(dir.string());
    }
  }
  ~MixtureData() { fs::remove_all(root_); }
  std::vector<MixtureSource> sources(const std::vector<double>& weights) const {
    std::vector<MixtureSource> list;
    for (size_t i = 0; i < paths_.size(); ++i) list.push_back({"source" + std::to_string(i), paths_[i], weights[i]});
    return list;
  }

 private:
  fs::path root_;
  std::vector<std::string> paths_;
};

struct Rows {
  std::vector<int64_t> inputs, targets;
  std::vector<int> sources;
};

Rows take(MixtureLoader& mix, int64_t rows) {
  Rows r;
  r.inputs.resize(static_cast<size_t>(rows * kSeqLen));
  r.targets.resize(r.inputs.size());
  r.sources.resize(static_cast<size_t>(rows));
  mix.next_batch(rows, r.inputs.data(), r.targets.data(), r.sources.data());
  return r;
}

TEST(data_Mixture, ProportionsWithinOnePercentOver1e5Sequences) {
  MixtureData data({500, 300, 400, 200, 100});
  const std::vector<double> weights = {55, 10, 20, 10, 5};
  auto mix = MixtureLoader::open(data.sources(weights), kSeqLen, 1);
  ASSERT_TRUE(mix.is_ok()) << mix.status().to_string();
  constexpr int64_t kRows = 100000;
  const Rows rows = take(*mix, kRows);
  std::vector<uint64_t> counts(weights.size(), 0);
  for (int64_t b = 0; b < kRows; ++b) {
    const int s = rows.sources[static_cast<size_t>(b)];
    ++counts[static_cast<size_t>(s)];
    // The row's tokens come from the source it is attributed to.
    ASSERT_EQ(rows.inputs[static_cast<size_t>(b * kSeqLen)] / 100000, s);
    ASSERT_EQ(rows.targets[static_cast<size_t>(b * kSeqLen)], rows.inputs[static_cast<size_t>(b * kSeqLen)] + 1);
  }
  for (size_t i = 0; i < weights.size(); ++i) {
    const double expected = weights[i] / 100.0;
    const double actual = static_cast<double>(counts[i]) / kRows;
    // Relative error under 1% (SWRR is in fact within a few sequences of exact).
    EXPECT_NEAR(actual, expected, 0.01 * expected) << mix->source_name(i);
    EXPECT_LE(std::abs(static_cast<double>(counts[i]) - expected * kRows), 3.0) << mix->source_name(i);
  }
  // Smooth: the 5% source never waits much more than 20 draws.
  int gap = 0, max_gap = 0;
  for (int s : rows.sources) {
    gap = s == 4 ? 0 : gap + 1;
    max_gap = std::max(max_gap, gap);
  }
  EXPECT_LE(max_gap, 21);
}

TEST(data_Mixture, SameSeedSameStreamAndCursorRestoresExactly) {
  MixtureData data({50, 70, 30});
  const auto sources = data.sources({2, 1, 1});
  auto a = MixtureLoader::open(sources, kSeqLen, 9);
  auto b = MixtureLoader::open(sources, kSeqLen, 9);
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  EXPECT_EQ(take(*a, 37).inputs, take(*b, 37).inputs);

  // Save after 37 rows (past an epoch of source 2), continue 200 rows; a fresh loader restored
  // from the cursor (directly and through JSON) serves the same 200 rows.
  const MixtureCursor saved = a->cursor();
  const Rows expected = take(*a, 200);
  auto c = MixtureLoader::open(sources, kSeqLen, 9);
  ASSERT_TRUE(c.is_ok());
  ASSERT_TRUE(c->set_cursor(saved).is_ok());
  EXPECT_EQ(c->cursor(), saved);
  EXPECT_EQ(take(*c, 200).inputs, expected.inputs);

  auto parsed = MixtureCursor::from_json(saved.to_json());
  ASSERT_TRUE(parsed.is_ok()) << parsed.status().to_string();
  EXPECT_EQ(*parsed, saved);
  auto d = MixtureLoader::open(sources, kSeqLen, 9);
  ASSERT_TRUE(d.is_ok());
  ASSERT_TRUE(d->set_cursor(*parsed).is_ok());
  const Rows again = take(*d, 200);
  EXPECT_EQ(again.inputs, expected.inputs);
  EXPECT_EQ(again.targets, expected.targets);
  EXPECT_EQ(d->cursor(), a->cursor());

  // Another seed gives another order.
  auto other = MixtureLoader::open(sources, kSeqLen, 10);
  ASSERT_TRUE(other.is_ok());
  auto fresh = MixtureLoader::open(sources, kSeqLen, 9);
  EXPECT_NE(take(*other, 37).inputs, take(*fresh, 37).inputs);
}

TEST(data_Mixture, RanksServeDisjointStreamsThatTogetherAreTheSingleNodeStream) {
  MixtureData data({60, 90, 45});
  const auto sources = data.sources({3, 2, 1});
  constexpr int kWorld = 3;
  constexpr int64_t kRowsPerRank = 20;  // 60 draws in all: within every source's first epoch
  auto single = MixtureLoader::open(sources, kSeqLen, 4, 0, 1);
  ASSERT_TRUE(single.is_ok());
  const Rows all = take(*single, kRowsPerRank * kWorld);

  std::set<int64_t> seen;
  std::vector<Rows> per_rank;
  for (int rank = 0; rank < kWorld; ++rank) {
    auto mix = MixtureLoader::open(sources, kSeqLen, 4, rank, kWorld);
    ASSERT_TRUE(mix.is_ok()) << mix.status().to_string();
    per_rank.push_back(take(*mix, kRowsPerRank));
    for (int64_t b = 0; b < kRowsPerRank; ++b) {
      const int64_t first_token = per_rank.back().inputs[static_cast<size_t>(b * kSeqLen)];
      EXPECT_TRUE(seen.insert(first_token).second) << "sequence starting at " << first_token << " served twice";
    }
    EXPECT_EQ(mix->cursor().draws, static_cast<uint64_t>(kRowsPerRank * kWorld));
  }
  // Draw g of the single-node stream is row g / W of rank g % W.
  for (int64_t g = 0; g < kRowsPerRank * kWorld; ++g) {
    const Rows& r = per_rank[static_cast<size_t>(g % kWorld)];
    const int64_t row = g / kWorld;
    for (int64_t t = 0; t < kSeqLen; ++t)
      ASSERT_EQ(r.inputs[static_cast<size_t>(row * kSeqLen + t)], all.inputs[static_cast<size_t>(g * kSeqLen + t)]) << g;
  }
}

TEST(data_Mixture, WorldMayChangeBetweenRoundsFromASharedCursor) {
  MixtureData data({200, 200});
  const auto sources = data.sources({1, 1});
  // Round 1: world 2, 7 rows each; round 2: world 3 from the shared cursor, 5 rows each.
  std::set<int64_t> seen;
  MixtureCursor shared;
  for (int rank = 0; rank < 2; ++rank) {
    auto mix = MixtureLoader::open(sources, kSeqLen, 3, rank, 2);
    ASSERT_TRUE(mix.is_ok());
    const Rows r = take(*mix, 7);
    for (int64_t b = 0; b < 7; ++b) EXPECT_TRUE(seen.insert(r.inputs[static_cast<size_t>(b * kSeqLen)]).second);
    if (rank == 0) shared = mix->cursor();
    EXPECT_EQ(mix->cursor(), shared) << "ranks disagree on the cursor after the same rows";
  }
  for (int rank = 0; rank < 3; ++rank) {
    auto mix = MixtureLoader::open(sources, kSeqLen, 3, rank, 3);
    ASSERT_TRUE(mix.is_ok());
    ASSERT_TRUE(mix->set_cursor(shared).is_ok());
    const Rows r = take(*mix, 5);
    for (int64_t b = 0; b < 5; ++b) EXPECT_TRUE(seen.insert(r.inputs[static_cast<size_t>(b * kSeqLen)]).second);
  }
  EXPECT_EQ(seen.size(), 14u + 15u);
  // And the union is the single-node stream's first 29 sequences.
  auto single = MixtureLoader::open(sources, kSeqLen, 3);
  ASSERT_TRUE(single.is_ok());
  const Rows all = take(*single, 29);
  std::set<int64_t> expected;
  for (int64_t b = 0; b < 29; ++b) expected.insert(all.inputs[static_cast<size_t>(b * kSeqLen)]);
  EXPECT_EQ(seen, expected);
}

TEST(data_Mixture, RefusesBadConfigurationListingEveryProblem) {
  MixtureData data({10, 10}, /*vocab_of_last=*/1000);
  auto sources = data.sources({1, -2});
  sources.push_back({"source0", "/nonexistent/dir", 0.0});
  auto mix = MixtureLoader::open(sources, kSeqLen, 0, 2, 2);
  ASSERT_FALSE(mix.is_ok());
  const std::string& msg = mix.status().message();
  EXPECT_NE(msg.find("rank 2 is not in [0, world 2)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'source1' has weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'source0' appears twice"), std::string::npos) << msg;
  EXPECT_NE(msg.find("/nonexistent/dir"), std::string::npos) << msg;
  EXPECT_NE(msg.find("vocab_size 1000"), std::string::npos) << msg;
  EXPECT_FALSE(mix.status().hint().empty());
  EXPECT_FALSE(MixtureLoader::open({}, kSeqLen, 0).is_ok());
}

TEST(data_Mixture, RefusesCursorsOfAnotherMixture) {
  MixtureData data({10, 10});
  auto mix = MixtureLoader::open(data.sources({1, 1}), kSeqLen, 0);
  ASSERT_TRUE(mix.is_ok());
  MixtureCursor c = mix->cursor();
  c.names[1] = "renamed";
  EXPECT_FALSE(mix->set_cursor(c).is_ok());
  c = mix->cursor();
  c.sources[0].position = 10;  // 10 sequences: positions 0..9
  EXPECT_FALSE(mix->set_cursor(c).is_ok());
  c = mix->cursor();
  c.credits[0] += 1;
  EXPECT_FALSE(mix->set_cursor(c).is_ok());
  EXPECT_FALSE(MixtureCursor::from_json("{\"version\": 99}").is_ok());
  EXPECT_FALSE(MixtureCursor::from_json("not json").is_ok());
  EXPECT_FALSE(MixtureCursor::from_json("{\"version\": 1, \"draws\": 1}").is_ok());
  EXPECT_TRUE(mix->set_cursor(mix->cursor()).is_ok());
}

}  // namespace
}  // namespace meridian::data
