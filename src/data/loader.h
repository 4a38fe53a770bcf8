// The token loader: packs the documents of one or more shards into fixed-length training
// sequences and serves them in a deterministic, seeded order, with a cursor that is saved in
// checkpoints and restored bit-exactly.
//
// Packing: the shards of a dataset are one logical token stream (shards sorted by file name;
// each document already starts with BOS). Sequence i is the window of T + 1 tokens starting at
// i * T: inputs are its first T tokens, targets its last T. Windows never cross the end of the
// stream, so there are floor((total - 1) / T) sequences.
// Order: epoch e visits every sequence once, in the permutation given by a Fisher-Yates shuffle
// driven by SplitMix64(seed ^ mix(e)) (our own RNG, so the order is the same on every platform).
// Cursor: (epoch, position within the epoch's permutation).
// Nodes (set_shard): with world W, each batch row consumes the next W sequences of the order and
// rank r reads the r-th of them, so ranks that start from the same cursor and take the same
// number of rows read disjoint sequences and end with the same cursor (the one a single node
// would reach after W times as many rows).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "data/shard.h"

namespace meridian::data {

struct LoaderCursor {
  uint64_t epoch = 0;
  uint64_t position = 0;  // next index into the epoch's permutation
  bool operator==(const LoaderCursor&) const = default;
};

class TokenLoader {
 public:
  // `path` is a shard file or a directory of *.tok shards. Errors: no shards, unreadable or
  // corrupt shard, fewer tokens than one sequence, shards of different vocabularies.
  static Result<TokenLoader> open(const std::string& path, int64_t seq_len, uint64_t seed);

  // Fills inputs and targets, each [batch, seq_len] int64 row-major, and advances the cursor
  // (by batch * world sequences). If `sequences` is given it receives each row's sequence index.
  void next_batch(int64_t batch, int64_t* inputs, int64_t* targets, uint64_t* sequences = nullptr);
  // Advances the cursor past n sequences without reading them.
  void skip(uint64_t n);
  // This node's share of the stream (see the file comment); 0 <= rank < world, asserted.
  void set_shard(int rank, int world);
  int rank() const { return rank_; }
  int world() const { return world_; }
  // The same sequence index the next call would read, without advancing (for tests).
  uint64_t peek_sequence() const;

  LoaderCursor cursor() const { return cursor_; }
  void set_cursor(const LoaderCursor& c);  // position must be < num_sequences(), asserted

  uint64_t num_sequences() const { return num_sequences_; }
  uint64_t num_tokens() const { return total_tokens_; }
  int64_t seq_len() const { return seq_len_; }
  uint32_t vocab_size() const { return vocab_size_; }
  // Entropy of the empirical token distribution of the whole stream, in nats per token: the
  // loss a model that ignores context cannot beat.
  double unigram_entropy_nats() const;

 private:
  void read_tokens(uint64_t begin, uint64_t n, int64_t* out) const;
  void build_permutation(uint64_t epoch);

  std::vector<std::shared_ptr<Shard>> shards_;
  std::vector<uint64_t> shard_begin_;  // first global token index of each shard
  uint64_t total_tokens_ = 0;
  uint64_t num_sequences_ = 0;
  int64_t seq_len_ = 0;
  uint64_t seed_ = 0;
  uint32_t vocab_size_ = 0;
  LoaderCursor cursor_;
  int rank_ = 0, world_ = 1;
  uint64_t permutation_epoch_ = UINT64_MAX;
  std::vector<uint64_t> permutation_;
};

}  // namespace meridian::data
