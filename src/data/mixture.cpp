// MixtureLoader: SWRR schedule over several TokenLoaders, partitioned across ranks. See mixture.h
// for the algorithm and its guarantees.
//
// Invariant: the credits always sum to zero (each draw adds total_weight_ in all and takes it back
// from the picked source), and every rank of a world holds the same draws_, credits_ and source
// cursors after the same number of rows.
#include "data/mixture.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "core/assert.h"
#include "core/hash.h"

namespace meridian::data {

std::string MixtureCursor::to_json() const {
  nlohmann::json j;
  j["version"] = kVersion;
  j["draws"] = draws;
  j["credits"] = credits;
  j["names"] = names;
  nlohmann::json list = nlohmann::json::array();
  for (const auto& c : sources) list.push_back({{"epoch", c.epoch}, {"position", c.position}});
  j["sources"] = list;
  return j.dump();
}

Result<MixtureCursor> MixtureCursor::from_json(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  const char* hint = "the cursor comes from MixtureCursor::to_json of the same Meridian version";
  if (j.is_discarded() || !j.is_object()) return Status::error("mixture cursor: not a JSON object", hint);
  if (!j.contains("version") || !j["version"].is_number_integer() || j["version"].get<int>() != kVersion)
    return Status::error("mixture cursor: version " + (j.contains("version") ? j["version"].dump() : std::string("missing")) +
                             ", expected " + std::to_string(kVersion),
                         hint);
  try {
    MixtureCursor c;
    c.draws = j.at("draws").get<uint64_t>();
    c.credits = j.at("credits").get<std::vector<int64_t>>();
    c.names = j.at("names").get<std::vector<std::string>>();
    for (const auto& s : j.at("sources")) c.sources.push_back({s.at("epoch").get<uint64_t>(), s.at("position").get<uint64_t>()});
    if (c.credits.size() != c.names.size() || c.sources.size() != c.names.size())
      return Status::error("mixture cursor: " + std::to_string(c.names.size()) + " names but " +
                               std::to_string(c.credits.size()) + " credits and " + std::to_string(c.sources.size()) + " sources",
                           hint);
    return c;
  } catch (const nlohmann::json::exception& e) {
    return Status::error(std::string("mixture cursor: missing or mistyped field (") + e.what() + ")", hint);
  }
}

Result<MixtureLoader> MixtureLoader::open(const std::vector<MixtureSource>& sources, int64_t seq_len, uint64_t seed,
                                          int rank, int world) {
  // User errors first, all at once.
  std::string problems;
  if (sources.empty()) problems += "no sources; ";
  if (world < 1 || rank < 0 || rank >= world)
    problems += "rank " + std::to_string(rank) + " is not in [0, world " + std::to_string(world) + "); ";
  std::set<std::string> seen;
  double total = 0.0;
  for (const auto& s : sources) {
    if (s.name.empty()) problems += "a source has no name (path " + s.path + "); ";
    if (!seen.insert(s.name).second) problems += "source name '" + s.name + "' appears twice; ";
    if (!(std::isfinite(s.weight) && s.weight > 0.0))
      problems += "source '" + s.name + "' has weight " + std::to_string(s.weight) + ", not a positive number; ";
    else
      total += s.weight;
  }
  MixtureLoader mix;
  for (size_t i = 0; i < sources.size(); ++i) {
    // Each source gets its own permutation seed, decorrelated from the others'.
    auto loader = TokenLoader::open(sources[i].path, seq_len, seed ^ SplitMix64(0x6d6978ull + i).next());
    if (!loader) {
      problems += "source '" + sources[i].name + "': " + loader.status().message() + "; ";
      continue;
    }
    if (mix.vocab_size_ == 0) mix.vocab_size_ = loader->vocab_size();
    if (loader->vocab_size() != mix.vocab_size_)
      problems += "source '" + sources[i].name + "' has vocab_size " + std::to_string(loader->vocab_size()) + ", not " +
                  std::to_string(mix.vocab_size_) + " like the first source; ";
    mix.loaders_.push_back(std::move(loader.value()));
  }
  if (!problems.empty()) {
    problems.resize(problems.size() - 2);
    return Status::error("mixture: " + problems,
                         "list datasets with unique names and positive weights, tokenized with the same tokenizer");
  }
  for (const auto& s : sources) {
    mix.names_.push_back(s.name);
    // At least 1 so that a tiny weight still appears; the total stays near kWeightScale.
    mix.weights_.push_back(std::max<int64_t>(1, std::llround(s.weight / total * static_cast<double>(kWeightScale))));
    mix.total_weight_ += mix.weights_.back();
  }
  mix.credits_.assign(sources.size(), 0);
  mix.seq_len_ = seq_len;
  mix.rank_ = rank;
  mix.world_ = world;
  return mix;
}

void MixtureLoader::set_shard(int rank, int world) {
  MERIDIAN_ASSERT(world >= 1 && rank >= 0 && rank < world, "shard rank {} of world {}", rank, world);
  rank_ = rank;
  world_ = world;
}

size_t MixtureLoader::draw() {
  size_t best = 0;
  for (size_t i = 0; i < credits_.size(); ++i) {
    credits_[i] += weights_[i];
    if (credits_[i] > credits_[best]) best = i;
  }
  credits_[best] -= total_weight_;
  ++draws_;
  return best;
}

void MixtureLoader::next_batch(int64_t batch, int64_t* inputs, int64_t* targets, int* row_sources) {
  MERIDIAN_ASSERT(batch >= 0, "batch {} must be non-negative", batch);
  for (int64_t b = 0; b < batch; ++b) {
    // This row's W draws: the one at offset rank_ is ours, the others belong to other ranks.
    for (int r = 0; r < world_; ++r) {
      const size_t source = draw();
      if (r != rank_) {
        loaders_[source].skip(1);
        continue;
      }
      loaders_[source].next_batch(1, inputs + b * seq_len_, targets + b * seq_len_);
      if (row_sources) row_sources[b] = static_cast<int>(source);
    }
  }
}

MixtureCursor MixtureLoader::cursor() const {
  MixtureCursor c;
  c.draws = draws_;
  c.credits = credits_;
  c.names = names_;
  for (const auto& l : loaders_) c.sources.push_back(l.cursor());
  return c;
}

Status MixtureLoader::set_cursor(const MixtureCursor& c) {
  const char* hint = "resume with the same mixture (names in the same order) and the same data";
  if (c.names != names_) return Status::error("mixture cursor is for sources that differ from this mixture's", hint);
  if (c.credits.size() != names_.size() || c.sources.size() != names_.size())
    return Status::error("mixture cursor has the wrong number of credits or source cursors", hint);
  int64_t sum = 0;
  for (int64_t credit : c.credits) sum += credit;
  if (sum != 0) return Status::error("mixture cursor credits do not sum to zero (corrupt cursor)", hint);
  for (size_t i = 0; i < loaders_.size(); ++i)
    if (c.sources[i].position >= loaders_[i].num_sequences())
      return Status::error("mixture cursor position " + std::to_string(c.sources[i].position) + " of source '" + names_[i] +
                               "' is past its " + std::to_string(loaders_[i].num_sequences()) + " sequences",
                           hint);
  for (size_t i = 0; i < loaders_.size(); ++i) loaders_[i].set_cursor(c.sources[i]);
  draws_ = c.draws;
  credits_ = c.credits;
  return Status::ok();
}

}  // namespace meridian::data
