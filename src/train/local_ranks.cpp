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
//   ring        an all-reduce on one ring per local rank: run this rank's ring on its shard
//               of the pseudo-gradient (operation, view, addresses, options), put the outcome
//               in the local store; rank 0 sets "<op>.abort" there when the operation failed
//               elsewhere, which interrupts the ring
//   ring_end    that operation's final status: keep the result, or put the shard back
//   done        the RoundSync's outcome: its status, the counters, the data cursor and, when a
//               round began, this node's rank among the nodes and whether the round's
//               all-reduce runs on one ring per local rank
// A rank that dies takes the node down (the launcher stops the others, apps/meridian/local_launch.h).
//
// The pseudo-gradient all-reduce. When every node of the round's view has this node's G local
// ranks (RoundSync::rings_per_local_rank), local rank r of every node all-reduces shard r over
// a ring of its own (net/rank_ring.h; rank 0's ring is the node's mesh), the G rings in
// parallel, and no rank holds more than its shard. Membership and the operation's one final
// status stay per node: rank 0 reports the node's outcome to the coordinator only once every
// ring of the node has its own, and the node keeps the result only when the final status is
// ok. Otherwise (nodes of different G in the view) rank 0 gathers the whole pseudo-gradient,
// reduces it in the layout of a one-rank node and scatters the mean back.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <thread>

#include "core/assert.h"
#include "core/fault.h"
#include "net/communicator.h"
#include "net/rank_ring.h"
#include "train/trainer.h"

namespace meridian::train {

namespace {
constexpr const char* kTheta = "outer.theta";
constexpr const char* kMomentum = "outer.momentum";
constexpr const char* kMoments[] = {"exp_avg.", "exp_avg_sq."};

// Local rank 0's side of the node's other rings (see the file comment).
class NodeRings final : public net::OtherRings {
 public:
  explicit NodeRings(LocalGroup& group) : group_(group) {}

  void start(const net::membership::View& view, size_t self, const net::AllReduceOptions& o) override {
    key_ = fmt::format("ring.{}.{}", view.epoch, o.op_id);
    nlohmann::json addresses = nlohmann::json::array();
    for (const auto& m : view.members) addresses.push_back(m.rank_addresses);
    group_.post(nlohmann::json{{"op", "ring"}, {"key", key_}, {"epoch", view.epoch}, {"self", self}, {"addresses", addresses},
                               {"codec", static_cast<int>(o.codec)}, {"reduce", static_cast<int>(o.op)},
                               {"chunk_values", o.chunk_values}, {"window_bytes", o.window_bytes}, {"timeout_ms", o.timeout_ms},
                               {"op_id", o.op_id}}
                    .dump());
  }

  net::NetStatus finish(const net::NetStatus& ours, const std::function<bool()>& stale) override {
    net::NetStatus combined;
    bool aborted = false;
    for (int r = 1; r < group_.size(); ++r) {
      const std::string key = key_ + ".result." + std::to_string(r);
      while (!group_.has(key)) {
        if (!aborted && (!ours.is_ok() || !combined.is_ok() || stale())) {
          group_.put(key_ + ".abort", "1");
          aborted = true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      const nlohmann::json j = nlohmann::json::parse(group_.take(key));
      bytes_sent += j.at("bytes_sent").get<uint64_t>();
      if (!j.at("ok").get<bool>() && combined.is_ok())
        combined = net::NetStatus::error(static_cast<net::NetCode>(j.at("code").get<int>()), net::kNoPeer,
                                         fmt::format("the ring of local rank {}: {}", r, j.at("detail").get<std::string>()));
    }
    return combined;
  }

  void end(bool commit) override { group_.post(nlohmann::json{{"op", "ring_end"}, {"commit", commit}}.dump()); }

  uint64_t bytes_sent = 0;  // by the other rings, over the operations

 private:
  LocalGroup& group_;
  std::string key_;
};

// Local rank r > 0: its part of the operation rank 0 named in a "ring" message.
net::NetStatus run_ring(LocalGroup& group, net::RankRing& ring, const nlohmann::json& j, torch::Tensor& shard,
                        uint64_t* bytes_sent) {
  const size_t r = static_cast<size_t>(group.rank());
  std::vector<std::string> addresses;
  for (const auto& member : j.at("addresses")) {
    if (member.size() < r) return net::NetStatus::error(net::NetCode::kProtocol, net::kNoPeer, "a member of the view has fewer local ranks");
    addresses.push_back(member.at(r - 1).get<std::string>());
  }
  net::AllReduceOptions o;
  o.codec = static_cast<net::Codec>(j.at("codec").get<int>());
  o.op = static_cast<net::ReduceOp>(j.at("reduce").get<int>());
  o.chunk_values = j.at("chunk_values").get<size_t>();
  o.window_bytes = j.at("window_bytes").get<size_t>();
  o.timeout_ms = j.at("timeout_ms").get<int64_t>();
  o.op_id = j.at("op_id").get<uint64_t>();
  MERIDIAN_FAULT_POINT("diloco.rank_ring");  // local rank r > 0, the N-th ring operation
  // Rank 0 flags the operation as failed elsewhere (its own ring, another rank's, a new view):
  // interrupt this ring until it returns, even if its mesh is still being built.
  const std::string abort_key = j.at("key").get<std::string>() + ".abort";
  std::atomic<bool> finished{false};
  ring.clear_interrupts();
  std::thread watcher([&] {
    bool aborted = false;
    while (!finished.load()) {
      if (aborted || group.has(abort_key)) {
        aborted = true;
        ring.interrupt("the operation failed on another ring of this node or the view changed");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  net::AllReduceStats stats;
  const net::NetStatus st = ring.run(j.at("epoch").get<uint64_t>(), j.at("self").get<size_t>(), addresses,
                                     std::span<float>(shard.data_ptr<float>(), static_cast<size_t>(shard.numel())), o, &stats);
  finished = true;
  watcher.join();
  *bytes_sent += stats.bytes_sent_total;
  return st;
}
}  // namespace

Status Trainer::all_reduce_pseudo_gradient(torch::Tensor& delta, double* norm) {
  RoundStats& rs = round_.stats;
  if (!fsdp_) {
    // The reducer works on host memory; a device buffer makes a round trip.
    torch::Tensor host = delta.device().is_cpu() ? delta : delta.to(torch::kCPU);
    *norm = host.norm().item<double>();
    MERIDIAN_RETURN_IF_ERROR(options_.round_sync->all_reduce_mean(host.data_ptr<float>(), static_cast<size_t>(host.numel()), &rs));
    if (!delta.device().is_cpu()) delta.copy_(host);
    return Status::ok();
  }
  if (rings_) {
    // Each rank reduces its own shard with the same-numbered ranks of the other nodes.
    *norm = std::sqrt(options_.local_group->all_reduce_sum(delta.pow(2).sum().item<double>()));
    if (!local_lead()) return follow_local_rank0(&rs, &delta);
    NodeRings others(*options_.local_group);
    const Status st = options_.round_sync->all_reduce_mean(delta.data_ptr<float>(), static_cast<size_t>(delta.numel()), &rs, &others);
    rs.all_reduce_bytes_sent += others.bytes_sent;
    return tell_local_ranks(st, rs);
  }
  // Rank 0 reduces the whole pseudo-gradient in the layout of a one-rank node.
  torch::Tensor full = gather_flat(delta);
  *norm = full.defined() ? full.norm().item<double>() : 0.0;
  if (local_lead()) {
    MERIDIAN_RETURN_IF_ERROR(
        tell_local_ranks(options_.round_sync->all_reduce_mean(full.data_ptr<float>(), static_cast<size_t>(full.numel()), &rs), rs));
  } else {
    MERIDIAN_RETURN_IF_ERROR(follow_local_rank0(&rs));
  }
  if (!rs.restarted) scatter_flat(full, delta);  // each rank its shards of the mean
  return Status::ok();
}

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
  round_start_ = Progress{step_, tokens_seen_, data_cursor()};
  if (fsdp_ && r == 0) node_shard_ = std::pair{node_rank, nodes};
}

Trainer::Progress Trainer::run_progress() const {
  return round_start_ ? *round_start_ : Progress{step_, tokens_seen_, data_cursor()};
}

Status Trainer::tell_local_ranks(Status result, const RoundStats& stats) {
  nlohmann::json j{{"op", "done"},       {"ok", result.is_ok()},  {"message", result.message()}, {"hint", result.hint()},
                   {"restarted", stats.restarted}, {"joined", stats.joined}, {"nodes", stats.nodes},
                   {"step", step_},      {"tokens", tokens_seen_}, {"cursor", data_cursor()}};
  if (node_shard_) {
    j["node_rank"] = node_shard_->first;
    j["node_count"] = node_shard_->second;
    node_shard_.reset();
    rings_ = options_.round_sync->rings_per_local_rank(local_world());
    j["rings"] = rings_;
  }
  options_.local_group->post(j.dump());
  return result;
}

Status Trainer::follow_local_rank0(RoundStats* stats, torch::Tensor* shard) {
  net::NetStatus ring_status = net::NetStatus::error(net::NetCode::kClosed, net::kNoPeer, "no ring operation yet");
  for (;;) {
    const nlohmann::json j = nlohmann::json::parse(options_.local_group->receive());
    const std::string op = j.at("op");
    if (op == "ring") {
      MERIDIAN_ASSERT(shard != nullptr && options_.rank_ring != nullptr, "local rank {}: a ring operation outside an all-reduce",
                      options_.local_group->rank());
      uint64_t bytes = 0;
      ring_status = run_ring(*options_.local_group, *options_.rank_ring, j, *shard, &bytes);
      options_.local_group->put(j.at("key").get<std::string>() + ".result." + std::to_string(options_.local_group->rank()),
                                nlohmann::json{{"ok", ring_status.is_ok()}, {"code", static_cast<int>(ring_status.code())},
                                               {"detail", ring_status.detail()}, {"bytes_sent", bytes}}
                                    .dump());
    } else if (op == "ring_end") {
      if (!j.at("commit").get<bool>() && ring_status.is_ok()) options_.rank_ring->restore_input();
    } else if (op == "load_outer") {
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
      if (j.contains("node_rank")) {
        start_round_as(j.at("node_rank").get<int>(), j.at("node_count").get<int>());
        rings_ = j.at("rings").get<bool>();
      }
      return Status::ok();
    }
  }
}

}  // namespace meridian::train
