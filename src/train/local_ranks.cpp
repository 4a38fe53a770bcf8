// DiLoCo on a node of G > 1 local ranks (DESIGN.md, "The two-level mesh"): the node meets the
// run through local rank 0, which runs the RoundSync (train/elastic.h) over the run's state in
// the layout of a node of one rank (gathered from the ranks' shards), so that nodes of any G
// train one run together. Each rank keeps the outer theta and momentum of its own shard and
// applies the outer step to it.
//
// While rank 0 is inside the RoundSync (a round start, or the all-reduce with its retries), the
// other ranks follow it: they wait for its messages (LocalGroup::post, in order) and take part
// in the collective each one names:
//   load_outer  rank 0 took the run's outer state: every rank takes its shard of it
//   gather_inner  a joiner needs this node's AdamW moments: gathered to rank 0
//   load_inner  rank 0 took a member's AdamW moments: every rank takes its shard
//   done        the RoundSync's outcome: its status, the counters, the data cursor and, when a
//               round began, this node's rank among the nodes
// A rank that dies takes the node down (the launcher stops the others, apps/meridian/local_launch.h).
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/assert.h"
#include "train/trainer.h"

namespace meridian::train {

namespace {
constexpr const char* kTheta = "outer.theta";
constexpr const char* kMomentum = "outer.momentum";
constexpr const char* kMoments[] = {"exp_avg.", "exp_avg_sq."};
}  // namespace

std::vector<torch::Tensor> Trainer::unit_views(const torch::Tensor& flat_shards) const {
  std::vector<torch::Tensor> out;
  int64_t offset = 0;
  for (const auto& shard : fsdp_->shard_tensors()) {
    out.push_back(flat_shards.narrow(0, offset, shard.numel()));
    offset += shard.numel();
  }
  MERIDIAN_ASSERT(offset == flat_shards.numel(), "unit_views: {} values for shards of {}", flat_shards.numel(), offset);
  return out;
}

torch::Tensor Trainer::gather_flat(const torch::Tensor& flat_shards) {
  const NamedTensors named = fsdp_->gather_named(unit_views(flat_shards));
  if (named.empty()) return {};  // not rank 0
  std::vector<torch::Tensor> flat;
  for (const auto& [name, t] : named) flat.push_back(t.reshape({-1}));
  return torch::cat(flat);
}

int64_t Trainer::parameter_count() const {
  int64_t n = 0;
  for (const auto& [name, shape] : fsdp_->parameter_shapes()) n += c10::multiply_integers(shape);
  return n;
}

NamedTensors Trainer::split_flat(const torch::Tensor& flat) const {
  NamedTensors out;
  int64_t offset = 0;
  for (const auto& [name, shape] : fsdp_->parameter_shapes()) {
    const int64_t n = c10::multiply_integers(shape);
    out.emplace_back(name, flat.narrow(0, offset, n).view(shape));
    offset += n;
  }
  MERIDIAN_ASSERT(offset == flat.numel(), "split_flat: {} values for parameters of {}", flat.numel(), offset);
  return out;
}

void Trainer::scatter_flat(const torch::Tensor& flat, const torch::Tensor& flat_shards) {
  fsdp_->scatter_named_from_rank0(local_lead() ? split_flat(flat) : NamedTensors{}, unit_views(flat_shards));
}

void Trainer::refresh_outer_full() {
  outer_full_ = full_outer_state();
  outer_full_valid_ = true;
}

void Trainer::take_outer_shards(int64_t rounds) {
  NamedTensors mine;
  for (size_t i = 0; i < 2; ++i) {
    torch::Tensor shard = torch::empty_like(outer_->state()[i].second);
    scatter_flat(local_lead() ? outer_full_[i].second : torch::Tensor(), shard);
    mine.emplace_back(outer_->state()[i].first, shard);
  }
  const std::string err = outer_->load_state(mine, rounds);
  MERIDIAN_ASSERT(err.empty(), "take_outer_shards: {}", err);
  outer_full_valid_ = true;
}

void Trainer::take_inner_shards(const NamedTensors& full, int64_t step) {
  for (const std::string moment : kMoments)
    fsdp_->scatter_named_from_rank0(local_lead() ? moment_of(full, moment) : NamedTensors{}, moment_shards(moment));
  optimizer_->set_step_count(step);
}

NamedTensors Trainer::outer_state() {
  if (!fsdp_) return outer_->state();
  MERIDIAN_ASSERT(local_lead() && outer_full_valid_, "outer_state: local rank 0 only, after a gather");
  return outer_full_;
}

std::string Trainer::load_outer_state(const NamedTensors& state, int64_t rounds) {
  if (!fsdp_) return outer_->load_state(state, rounds);
  const int64_t n = parameter_count();
  NamedTensors full;
  for (const char* name : {kTheta, kMomentum}) {
    auto it = std::find_if(state.begin(), state.end(), [&](const auto& item) { return item.first == name; });
    if (it == state.end()) return std::string("state has no tensor '") + name + "'";
    if (it->second.numel() != n) return fmt::format("tensor '{}' has {} values, the model needs {}", name, it->second.numel(), n);
    full.emplace_back(name, it->second.reshape({-1}).to(torch::kFloat).clone());
  }
  outer_full_ = std::move(full);
  options_.local_group->post(nlohmann::json{{"op", "load_outer"}, {"rounds", rounds}}.dump());
  take_outer_shards(rounds);
  return "";
}

NamedTensors Trainer::inner_state() {
  if (!fsdp_) return optimizer_->state();
  options_.local_group->post(nlohmann::json{{"op", "gather_inner"}}.dump());
  return full_optimizer_state();
}

std::string Trainer::load_inner_state(const NamedTensors& state, int64_t step) {
  if (!fsdp_) return optimizer_->load_state(state, step);
  for (const std::string moment : kMoments)
    if (std::string err = fsdp_->check_named(moment_of(state, moment)); !err.empty()) return moment + " " + err;
  options_.local_group->post(nlohmann::json{{"op", "load_inner"}, {"step", step}}.dump());
  take_inner_shards(state, step);
  return "";
}

void Trainer::start_round_as(int node_rank, int nodes) {
  // Local rank r of node n (of W nodes, G ranks each) reads every (W G)-th sequence from
  // n + W r: the node's rows are those of a one-rank node of W, split among its ranks.
  const int G = local_world(), r = fsdp_ ? options_.local_group->rank() : 0;
  set_data_shard(node_rank + nodes * r, nodes * G);
  outer_->copy_theta_to_params();
  if (fsdp_ && r == 0) node_shard_ = std::pair{node_rank, nodes};
}

Status Trainer::tell_local_ranks(Status result, const RoundStats& stats) {
  nlohmann::json j{{"op", "done"},       {"ok", result.is_ok()},  {"message", result.message()}, {"hint", result.hint()},
                   {"restarted", stats.restarted}, {"joined", stats.joined}, {"nodes", stats.nodes},
                   {"step", step_},      {"tokens", tokens_seen_}, {"cursor", data_cursor()}};
  if (node_shard_) {
    j["node_rank"] = node_shard_->first;
    j["node_count"] = node_shard_->second;
    node_shard_.reset();
  }
  options_.local_group->post(j.dump());
  return result;
}

Status Trainer::follow_local_rank0(RoundStats* stats) {
  for (;;) {
    const nlohmann::json j = nlohmann::json::parse(options_.local_group->receive());
    const std::string op = j.at("op");
    if (op == "load_outer") {
      take_outer_shards(j.at("rounds").get<int64_t>());
    } else if (op == "gather_inner") {
      full_optimizer_state();
    } else if (op == "load_inner") {
      take_inner_shards({}, j.at("step").get<int64_t>());
    } else {
      MERIDIAN_ASSERT(op == "done", "local rank {}: unknown message '{}' from local rank 0", options_.local_group->rank(), op);
      stats->restarted = j.at("restarted").get<bool>();
      stats->joined = j.at("joined").get<bool>();
      stats->nodes = j.at("nodes").get<int>();
      if (!j.at("ok").get<bool>())
        return Status::error("local rank 0: " + j.at("message").get<std::string>(), j.at("hint").get<std::string>());
      set_progress(j.at("step").get<int64_t>(), j.at("tokens").get<int64_t>());
      MERIDIAN_RETURN_IF_ERROR(set_data_cursor(j.at("cursor").get<std::string>()));
      if (j.contains("node_rank")) start_round_as(j.at("node_rank").get<int>(), j.at("node_count").get<int>());
      return Status::ok();
    }
  }
}

}  // namespace meridian::train
