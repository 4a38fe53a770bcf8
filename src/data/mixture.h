// Dataset mixtures: several token datasets (shard directories) drawn in fixed proportions, e.g.
// INTELLECT-1's fineweb-edu:fineweb:stack:dclm:open-web-math = 55:10:20:10:5.
//
// Schedule: one global sequence of draws shared by every node. Draw g picks a source with smooth
// weighted round-robin (nginx's SWRR) over integer weights: every source's credit grows by its
// weight, the source with the most credit (lowest index on ties) is picked and pays the total
// weight back. After g draws each source has been picked within a couple of draws of
// g * weight / total, and picks are spread evenly rather than in bursts. Integer arithmetic:
// the schedule is identical on every platform.
// Sources: each source is a TokenLoader (loader.h) with its own seed (derived from the mixture
// seed and the source's index); the source picked by draw g serves its next sequence.
// Nodes: with world W, each batch row consumes the next W draws and rank r reads the r-th of
// them. Every rank runs the whole schedule and advances every source's cursor, but reads only its
// own draws; ranks that start from the same cursor and take the same number of rows therefore
// get disjoint streams (within each source's epoch) that together are exactly the single-node
// stream. The cursor does not depend on W, so an elastic run may change W between rounds: every
// member restores the same (shared) cursor and continues with the new W.
// Cursor: the draw count, the SWRR credits and every source's LoaderCursor; saving and restoring
// it resumes the stream bit-exactly (to_json/from_json give a versioned text form for checkpoints).
//
// Cost per row: O(W * S) integer operations (S sources) plus one sequence read.
// Not here: config parsing (src/config parses `data.mixture`, src/train opens the loader), tokenization.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "data/loader.h"

namespace meridian::data {

struct MixtureSource {
  std::string name;    // unique, shown in errors and stored in the cursor
  std::string path;    // shard file or directory of *.tok shards
  double weight = 1.0; // > 0; only ratios matter
};

struct MixtureCursor {
  static constexpr int kVersion = 1;
  uint64_t draws = 0;                  // global draws consumed, by all ranks together
  std::vector<int64_t> credits;        // SWRR credit per source
  std::vector<LoaderCursor> sources;   // per source
  std::vector<std::string> names;      // per source, checked on restore
  bool operator==(const MixtureCursor&) const = default;

  std::string to_json() const;
  // Errors: malformed text, wrong version.
  static Result<MixtureCursor> from_json(const std::string& text);
};

class MixtureLoader {
 public:
  // Opens every source (all errors listed at once): at least one source, unique non-empty names,
  // finite positive weights, 0 <= rank < world, every source openable with the same vocab_size.
  static Result<MixtureLoader> open(const std::vector<MixtureSource>& sources, int64_t seq_len, uint64_t seed,
                                    int rank = 0, int world = 1);

  // Fills inputs and targets, each [batch, seq_len] int64 row-major, like TokenLoader, and
  // advances the cursor. If `row_sources` is given it receives the source index of each row.
  void next_batch(int64_t batch, int64_t* inputs, int64_t* targets, int* row_sources = nullptr);

  MixtureCursor cursor() const;
  // Restores a cursor from cursor(): same sources (names, in order), positions in range.
  Status set_cursor(const MixtureCursor& c);

  size_t num_sources() const { return loaders_.size(); }
  const std::string& source_name(size_t i) const { return names_[i]; }
  // The integer SWRR weight of each source (the normalised weights scaled to kWeightScale).
  const std::vector<int64_t>& weights() const { return weights_; }
  int64_t seq_len() const { return seq_len_; }
  uint32_t vocab_size() const { return vocab_size_; }
  int rank() const { return rank_; }
  int world() const { return world_; }
  // Changes this node's share from the next row on (an elastic run, at a round start).
  void set_shard(int rank, int world);

  static constexpr int64_t kWeightScale = 1 << 20;

 private:
  MixtureLoader() = default;
  size_t draw();  // advances the schedule by one draw, returns the source

  std::vector<TokenLoader> loaders_;
  std::vector<std::string> names_;
  std::vector<int64_t> weights_;
  int64_t total_weight_ = 0;
  std::vector<int64_t> credits_;
  uint64_t draws_ = 0;
  int64_t seq_len_ = 0;
  uint32_t vocab_size_ = 0;
  int rank_ = 0, world_ = 1;
};

}  // namespace meridian::data
