// TokenLoader: the shards as one token stream, cut into overlapping windows of T + 1 tokens
// (stride T), served in a seeded per-epoch permutation. See loader.h for the contract.
//
// Invariant: permutation_ is always the permutation of cursor_.epoch (permutation_epoch_), and
// cursor_.position < num_sequences_; the cursor wraps into the next epoch as soon as an epoch's
// last sequence has been served, so a saved cursor is always a valid set_cursor() argument.
// Cost: O(num_sequences) memory and time per epoch for the permutation; each batch reads
// batch * 2T tokens straight from the mapped shards.
#include "data/loader.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <unordered_map>

#include "core/assert.h"
#include "core/hash.h"

namespace meridian::data {

namespace {

// Decorrelates consecutive epoch numbers before they are xor-ed into the seed.
uint64_t mix(uint64_t epoch) { return SplitMix64(epoch).next(); }

Result<std::vector<std::string>> list_shards(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return std::vector<std::string>{path};
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(path, ec)) {
    if (entry.path().extension() == ".tok" && entry.is_regular_file(ec)) files.push_back(entry.path().string());
  }
  if (ec) return Status::error(path + ": cannot list directory (" + ec.message() + ")");
  if (files.empty())
    return Status::error(path + ": no *.tok shards in directory", "create them with `meridian tokenize`, or check the data path");
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

Result<TokenLoader> TokenLoader::open(const std::string& path, int64_t seq_len, uint64_t seed) {
  if (seq_len <= 0) return Status::error("sequence length must be positive, got " + std::to_string(seq_len));
  auto files = list_shards(path);
  if (!files) return files.status();

  TokenLoader loader;
  loader.seq_len_ = seq_len;
  loader.seed_ = seed;
  for (const auto& file : *files) {
    auto shard = Shard::open(file);
    if (!shard) return shard.status();
    if (loader.shards_.empty() && loader.vocab_size_ == 0) loader.vocab_size_ = shard->vocab_size();
    if (shard->vocab_size() != loader.vocab_size_)
      return Status::error(file + ": vocab_size " + std::to_string(shard->vocab_size()) + " differs from " +
                               std::to_string(loader.vocab_size_) + " of " + (*files)[0],
                           "all shards of a dataset must come from the same tokenizer; re-run `meridian tokenize`");
    if (shard->size() == 0) continue;  // contributes no tokens; skipping keeps shard_begin_ strictly increasing
    loader.shard_begin_.push_back(loader.total_tokens_);
    loader.total_tokens_ += shard->size();
    loader.shards_.push_back(std::make_shared<Shard>(std::move(shard.value())));
  }
  const uint64_t T = static_cast<uint64_t>(seq_len);
  loader.num_sequences_ = loader.total_tokens_ > 0 ? (loader.total_tokens_ - 1) / T : 0;
  if (loader.num_sequences_ == 0)
    return Status::error(path + ": " + std::to_string(loader.total_tokens_) + " tokens, fewer than one sequence of " +
                             std::to_string(T + 1),
                         "use more data or a shorter sequence length");
  loader.build_permutation(0);
  return loader;
}

void TokenLoader::build_permutation(uint64_t epoch) {
  // Fisher-Yates, from the back: position i swaps with a uniform j in [0, i].
  permutation_.resize(num_sequences_);
  for (uint64_t i = 0; i < num_sequences_; ++i) permutation_[i] = i;
  SplitMix64 rng(seed_ ^ mix(epoch));
  for (uint64_t i = num_sequences_; i > 1; --i) {
    const uint64_t j = rng.below(i);
    std::swap(permutation_[i - 1], permutation_[j]);
  }
  permutation_epoch_ = epoch;
}

void TokenLoader::read_tokens(uint64_t begin, uint64_t n, int64_t* out) const {
  MERIDIAN_ASSERT(begin <= total_tokens_ && n <= total_tokens_ - begin, "read [{}, +{}) past the stream of {} tokens",
                  begin, n, total_tokens_);
  // The last shard whose first token is <= begin holds it; a window may continue into the next.
  size_t s = static_cast<size_t>(std::upper_bound(shard_begin_.begin(), shard_begin_.end(), begin) - shard_begin_.begin()) - 1;
  while (n > 0) {
    const uint64_t local = begin - shard_begin_[s];
    const uint64_t take = std::min<uint64_t>(n, shards_[s]->size() - local);
    shards_[s]->read(local, take, out);
    out += take;
    begin += take;
    n -= take;
    ++s;
  }
}

void TokenLoader::next_batch(int64_t batch, int64_t* inputs, int64_t* targets, uint64_t* sequences) {
  MERIDIAN_ASSERT(batch >= 0, "batch {} must be non-negative", batch);
  MERIDIAN_ASSERT(permutation_epoch_ == cursor_.epoch, "permutation of epoch {} but cursor at epoch {}", permutation_epoch_,
                  cursor_.epoch);
  const uint64_t T = static_cast<uint64_t>(seq_len_);
  for (int64_t b = 0; b < batch; ++b) {
    skip(static_cast<uint64_t>(rank_));  // the rows of lower ranks
    const uint64_t sequence = permutation_[cursor_.position];
    if (sequences) sequences[b] = sequence;
    read_tokens(sequence * T, T, inputs + b * seq_len_);
    read_tokens(sequence * T + 1, T, targets + b * seq_len_);
    skip(static_cast<uint64_t>(world_ - rank_));  // ours and those of higher ranks
  }
}

void TokenLoader::skip(uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) {
    if (++cursor_.position == num_sequences_) {
      cursor_.position = 0;
      ++cursor_.epoch;
      build_permutation(cursor_.epoch);
    }
  }
}

void TokenLoader::set_shard(int rank, int world) {
  MERIDIAN_ASSERT(world >= 1 && rank >= 0 && rank < world, "shard rank {} of world {}", rank, world);
  rank_ = rank;
  world_ = world;
}

uint64_t TokenLoader::peek_sequence() const { return permutation_[cursor_.position]; }

void TokenLoader::set_cursor(const LoaderCursor& c) {
  MERIDIAN_ASSERT(c.position < num_sequences_, "cursor position {} out of range for {} sequences", c.position,
                  num_sequences_);
  cursor_ = c;
  if (permutation_epoch_ != c.epoch) build_permutation(c.epoch);
}

double TokenLoader::unigram_entropy_nats() const {
  // Counts over every token of the stream. Ids >= vocab_size (a corrupt shard) are counted apart
  // rather than trusted as an array index.
  std::vector<uint64_t> counts(vocab_size_, 0);
  std::unordered_map<int64_t, uint64_t> out_of_vocab;
  constexpr uint64_t kChunk = 1 << 16;
  std::vector<int64_t> buf(kChunk);
  for (uint64_t begin = 0; begin < total_tokens_; begin += kChunk) {
    const uint64_t n = std::min(kChunk, total_tokens_ - begin);
    read_tokens(begin, n, buf.data());
    for (uint64_t i = 0; i < n; ++i) {
      const int64_t t = buf[i];
      if (t < static_cast<int64_t>(vocab_size_)) {
        ++counts[static_cast<size_t>(t)];
      } else {
        ++out_of_vocab[t];
      }
    }
  }
  const double total = static_cast<double>(total_tokens_);
  double entropy = 0.0;
  auto add = [&](uint64_t c) {
    if (c == 0) return;
    const double p = static_cast<double>(c) / total;
    entropy -= p * std::log(p);
  };
  for (uint64_t c : counts) add(c);
  for (const auto& [t, c] : out_of_vocab) add(c);
  return entropy;
}

}  // namespace meridian::data
