#include "train/elastic.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <span>
#include <thread>

#include "config/config.h"
#include "core/assert.h"
#include "core/fault.h"
#include "train/trainer.h"

namespace meridian::train {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

constexpr const char* kTheta = "outer.theta";
constexpr const char* kMomentum = "outer.momentum";
constexpr const char* kCounters = "run.counters";      // i64 [step, tokens_seen, outer rounds]
constexpr const char* kCursor = "run.data_cursor";     // text
constexpr const char* kModelHash = "run.model_hash";   // text
constexpr const char* kInnerStep = "inner.step";       // i64 [AdamW step count]
constexpr const char* kInnerPrefix = "inner.";

net::BufferDtype dtype_of(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat: return net::BufferDtype::kF32;
    case torch::kHalf: return net::BufferDtype::kF16;
    case torch::kBFloat16: return net::BufferDtype::kBf16;
    case torch::kLong: return net::BufferDtype::kI64;
    case torch::kInt: return net::BufferDtype::kI32;
    case torch::kByte: return net::BufferDtype::kU8;
    default: return net::BufferDtype::kBytes;
  }
}

std::span<const std::byte> bytes_of(const torch::Tensor& t) {
  return {reinterpret_cast<const std::byte*>(t.data_ptr()), t.nbytes()};
}

void put_tensor(net::SharedState& state, const std::string& name, const torch::Tensor& t) {
  const torch::Tensor host = t.detach().to(torch::kCPU).contiguous();
  state.put(name, dtype_of(host.scalar_type()), bytes_of(host));
}

void put_text(net::SharedState& state, const std::string& name, const std::string& text) {
  state.put(name, net::BufferDtype::kBytes, std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()), text.size()));
}

std::string text_of(const net::SharedState::Buffer& b) { return std::string(reinterpret_cast<const char*>(b.bytes.data()), b.bytes.size()); }

// A CPU tensor shaped and typed like `like`, holding the buffer's bytes (which must fit).
Result<torch::Tensor> tensor_like(const net::SharedState& state, const std::string& name, const torch::Tensor& like) {
  const auto* b = state.find(name);
  if (b == nullptr) return Status::error("the run's state has no buffer '" + name + "'");
  if (b->dtype != dtype_of(like.scalar_type()) || b->bytes.size() != like.nbytes())
    return Status::error(fmt::format("the run's '{}' is {} bytes of {}, this node's is {} bytes of {}", name, b->bytes.size(),
                                     net::buffer_dtype_name(b->dtype), like.nbytes(), net::buffer_dtype_name(dtype_of(like.scalar_type()))),
                         "start every node of a run with the same [model] and [train] settings");
  torch::Tensor t = torch::empty(like.sizes(), torch::TensorOptions().dtype(like.scalar_type()));
  std::memcpy(t.data_ptr(), b->bytes.data(), b->bytes.size());
  return t;
}

std::string join_ids(const std::vector<net::PeerId>& ids) {
  std::string s;
  for (auto id : ids) s += (s.empty() ? "" : ",") + std::to_string(id);
  return s;
}

}  // namespace

Result<std::unique_ptr<ElasticRounds>> ElasticRounds::connect(ElasticOptions options) {
  std::unique_ptr<ElasticRounds> r(new ElasticRounds(std::move(options)));
  auto comm = net::Communicator::connect(r->options_.comm);
  if (!comm) return comm.status();
  r->comm_ = std::move(comm.value());
  if (r->options_.out) {
    std::fprintf(r->options_.out, "# joined the run at %s as peer %u (mesh %s)%s\n", r->options_.comm.coordinator_address.c_str(),
                 static_cast<unsigned>(r->comm_->peer_id()), r->comm_->listen_address().c_str(),
                 r->has_state_ ? "; offers its resumed state" : "; waits for the next round start");
    std::fflush(r->options_.out);
  }
  return r;
}

int ElasticRounds::world_size() const { return static_cast<int>(std::max<size_t>(1, comm_->view().members.size())); }

Status ElasticRounds::leave() { return comm_->leave(); }

Status ElasticRounds::begin_round(Trainer& trainer, RoundStats* stats) {
  size_t joiners_waiting = 0;
  return begin_round(trainer, stats, /*admit_joiners=*/true, &joiners_waiting);
}

Status ElasticRounds::begin_round(Trainer& trainer, RoundStats* stats, bool admit_joiners, size_t* joiners_waiting) {
  trainer_ = &trainer;
  MERIDIAN_RETURN_IF_ERROR(meet(trainer, admit_joiners, stats));
  *joiners_waiting = admit_joiners ? 0 : comm_->joiners_waiting();
  trainer.start_round_as(static_cast<int>(comm_->rank()), world_size());
  stats->nodes = world_size();
  return Status::ok();
}

void ElasticRounds::start_all_reduce_mean(float* data, size_t count) {
  MERIDIAN_ASSERT(!pending_.valid(), "start_all_reduce_mean: one is in flight already");
  background_ = true;
  pending_ = std::async(std::launch::async, [this, data, count] {
    RoundStats stats;
    Status st = all_reduce_mean(data, count, &stats, nullptr);
    return std::pair{st, stats};
  });
}

Status ElasticRounds::finish_all_reduce_mean(RoundStats* stats) {
  MERIDIAN_ASSERT(pending_.valid(), "finish_all_reduce_mean without start_all_reduce_mean");
  auto [st, bg] = pending_.get();
  background_ = false;
  behind_ = false;
  stats->nodes = bg.nodes;
  stats->barrier_s += bg.barrier_s;
  stats->state_sync_s += bg.state_sync_s;
  stats->state_bytes_downloaded += bg.state_bytes_downloaded;
  stats->all_reduce_s += bg.all_reduce_s;
  stats->all_reduce_bytes_sent += bg.all_reduce_bytes_sent;
  stats->retries += bg.retries;
  stats->joined |= bg.joined;
  if (!st.is_ok()) return st;
  if (parked_) {  // bg.restarted: the background thread received the run's state
    Parked parked = std::move(*parked_);
    parked_.reset();
    MERIDIAN_RETURN_IF_ERROR(take_run_state(*trainer_, parked.state, parked.ss, parked.rounds_before));
    trainer_->start_round_as(static_cast<int>(comm_->rank()), world_size());
    stats->restarted = true;
  }
  return Status::ok();
}

bool ElasticRounds::rings_per_local_rank(int local_world) const {
  const auto& members = comm_->view().members;
  return local_world > 1 && !members.empty() && std::all_of(members.begin(), members.end(), [&](const net::membership::ViewMember& m) {
           return m.rank_addresses.size() == static_cast<size_t>(local_world - 1);
         });
}

Status ElasticRounds::all_reduce_mean(float* data, size_t count, RoundStats* stats, net::OtherRings* others) {
  MERIDIAN_ASSERT(trainer_ != nullptr, "all_reduce_mean before begin_round");
  MERIDIAN_FAULT_POINT("diloco.all_reduce");  // the N-th round's all-reduce (MERIDIAN_FAULT=diloco.all_reduce@N)
  for (;;) {
    stats->nodes = world_size();
    net::OpStats op;
    const net::NetStatus st = comm_->all_reduce(data, count, options_.codec, net::ReduceOp::kMean, others, &op);
    stats->all_reduce_s += op.seconds;
    stats->all_reduce_bytes_sent += op.bytes_sent;
    if (st.is_ok()) return Status::ok();
    ++stats->retries;
    if (options_.out) {
      std::fprintf(options_.out, "# all-reduce failed (%s); meeting the survivors and retrying\n", st.to_string().c_str());
      std::fflush(options_.out);
    }
    took_run_state_ = false;
    MERIDIAN_RETURN_IF_ERROR(meet(*trainer_, /*admit_joiners=*/false, stats));
    if (took_run_state_ && background_) {
      stats->restarted = true;  // finish_all_reduce_mean takes the parked state
      behind_ = true;
      return Status::ok();
    }
    if (took_run_state_) {
      // Behind the run (evicted while frozen, then admitted again as a joiner): the others are
      // at a round start, so this node begins that round with them, as begin_round would.
      trainer_->start_round_as(static_cast<int>(comm_->rank()), world_size());
      stats->nodes = world_size();
      stats->restarted = true;
      return Status::ok();
    }
  }
}

Status ElasticRounds::meet(Trainer& trainer, bool admit_joiners, RoundStats* stats) {
  std::string last_sync_failure;
  for (;;) {
    const auto t0 = Clock::now();
    // min_nodes holds only the first barrier: later, a run that lost nodes must go on.
    Status st = comm_->update_topology(members_.empty() ? options_.min_nodes : 0, admit_joiners);
    const double waited_s = seconds_since(t0);
    stats->barrier_s += waited_s;
    if (!st.is_ok() && members_.empty() && waited_s * 1000 >= static_cast<double>(options_.comm.topology_timeout_ms)) {
      // Timed out before ever being admitted: a new run's first node waits for diloco.min_nodes
      // nodes, a joiner for the current round to end; both may take longer than the bound.
      return Status::error(st.message(), "the first round start waits at most diloco.round_timeout_s, for diloco.min_nodes "
                                         "nodes (a new run) or for the run's next round start (a joiner): raise it above "
                                         "the run's round time, or check that the other nodes are up")
          .with_context("round start");
    }
    if (!st.is_ok()) return st.with_context("round start");
    log_view_change();
    net::NetStatus ns = sync_run_state(trainer, stats);
    if (!fatal_.is_ok()) return fatal_;
    // In the background (a retry of the all-reduce in flight) the members skip it alike; a node
    // admitted there again (it was evicted) meets members at their round start, who run it.
    const bool inner_sync = comm_->view().epoch != inner_synced_epoch_ && (!background_ || comm_->admitted_at_last_barrier());
    if (ns.is_ok() && inner_sync) {
      ns = sync_inner_state(trainer, stats);
      if (!fatal_.is_ok()) return fatal_;
      if (ns.is_ok()) inner_synced_epoch_ = comm_->view().epoch;
    }
    if (ns.is_ok()) return Status::ok();
    // The same failure again (the coordinator waits for a holder of the run's state to come
    // back) is said once; a pause keeps the retries from spinning.
    const std::string why = ns.to_string();
    if (options_.out && why != last_sync_failure) {
      std::fprintf(options_.out, "# state sync failed (%s); meeting again\n", why.c_str());
      std::fflush(options_.out);
    }
    last_sync_failure = why;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
}

void ElasticRounds::log_view_change() {
  std::vector<net::PeerId> now;
  for (const auto& m : comm_->view().members) now.push_back(m.peer_id);
  if (now == members_) return;
  std::vector<net::PeerId> joined, left;
  for (auto id : now)
    if (std::find(members_.begin(), members_.end(), id) == members_.end()) joined.push_back(id);
  for (auto id : members_)
    if (std::find(now.begin(), now.end(), id) == now.end()) left.push_back(id);
  members_ = now;
  if (!options_.out) return;
  std::fprintf(options_.out, "# view epoch %llu: %zu nodes [%s], this node rank %zu%s%s\n",
               static_cast<unsigned long long>(comm_->view().epoch), now.size(), join_ids(now).c_str(), comm_->rank(),
               joined.empty() ? "" : fmt::format("; joined {}", join_ids(joined)).c_str(),
               left.empty() ? "" : fmt::format("; gone {}", join_ids(left)).c_str());
  std::fflush(options_.out);
}

net::NetStatus ElasticRounds::sync_run_state(Trainer& trainer, RoundStats* stats) {
  const int64_t rounds_before = trainer.outer_rounds();
  const std::string model = model_hash(trainer.config().model);
  net::SharedState state;
  if (has_state_) {
    for (const auto& [name, t] : trainer.outer_state()) put_tensor(state, name, t);
    const Trainer::Progress progress = trainer.run_progress();  // the round's start, during its all-reduce
    put_tensor(state, kCounters, torch::tensor({progress.step, progress.tokens, rounds_before}, torch::kLong));
    put_text(state, kCursor, progress.cursor);
    put_text(state, kModelHash, model);
    state.set_revision(static_cast<uint64_t>(rounds_before));
  }
  net::SyncOpStats ss;
  const net::NetStatus st = comm_->sync_shared_state(state, &ss);
  stats->state_sync_s += ss.seconds;
  stats->state_bytes_downloaded += ss.bytes_downloaded;
  if (!st.is_ok()) return st;
  if ((ss.buffers_downloaded > 0 || !has_state_) && !state.buffers().empty()) {
    // This node was fresh or stale: take the run's state (later, on the caller's thread, when
    // this runs in the background beside the trainer's inner steps).
    took_run_state_ = true;
    stats->joined = true;
    if (background_) {
      parked_ = Parked{std::move(state), ss, rounds_before};
    } else if (Status taken = take_run_state(trainer, state, ss, rounds_before); !taken.is_ok()) {
      return net::NetStatus::error(net::NetCode::kProtocol, net::kNoPeer, taken.message());
    }
  }
  has_state_ = true;
  return st;
}

Status ElasticRounds::take_run_state(Trainer& trainer, const net::SharedState& state, const net::SyncOpStats& ss, int64_t rounds_before) {
  auto fail = [&](const Status& why) {
    fatal_ = why.with_context("joining the run");
    return fatal_;
  };
  const std::string model = model_hash(trainer.config().model);
  const auto* hash = state.find(kModelHash);
  if (hash == nullptr || text_of(*hash) != model)
    return fail(Status::error("the run trains another model shape than this node's config",
                              "start every node with the run's [model] settings (same preset or config file)"));
  const NamedTensors own = trainer.outer_state();
  auto theta = tensor_like(state, kTheta, own[0].second);
  auto momentum = tensor_like(state, kMomentum, own[1].second);
  auto counters = tensor_like(state, kCounters, torch::zeros({3}, torch::kLong));
  if (!theta) return fail(theta.status());
  if (!momentum) return fail(momentum.status());
  if (!counters) return fail(counters.status());
  const auto* c = counters->data_ptr<int64_t>();
  const std::string err = trainer.load_outer_state({{kTheta, theta.value()}, {kMomentum, momentum.value()}}, c[2]);
  if (!err.empty()) return fail(Status::error(err));
  trainer.set_progress(c[0], c[1]);
  const auto* cursor = state.find(kCursor);
  if (cursor == nullptr) return fail(Status::error("the run's state has no data cursor"));
  if (Status cs = trainer.set_data_cursor(text_of(*cursor)); !cs.is_ok()) return fail(cs);
  if (has_state_ && c[2] == rounds_before && options_.out) {
    // Same round, another state: two histories of the run (a fork), resolved by the election.
    std::fprintf(options_.out, "# FORK: this node held another state for round %lld than the run's elected one; it takes "
                               "the elected state (see the coordinator's run log, event \"fork\")\n",
                 static_cast<long long>(c[2]));
  }
  if (options_.out) {
    std::fprintf(options_.out, "# received the run state: step %lld, round %lld, %.2f MB in %.3f s (%.2f Gbit/s)\n",
                 static_cast<long long>(c[0]), static_cast<long long>(c[2]), ss.bytes_downloaded / 1e6, ss.transfer_seconds,
                 ss.gbit_per_s());
    std::fflush(options_.out);
  }
  return Status::ok();
}

net::NetStatus ElasticRounds::sync_inner_state(Trainer& trainer, RoundStats* stats) {
  // In the background (admitted again in a retry of the all-reduce in flight) the trainer's
  // thread owns the inner state: take part in the members' sync, but offer and take nothing.
  const bool bystander = background_;
  const NamedTensors own = bystander ? NamedTensors{} : trainer.inner_state();
  net::SharedState state;
  if (bystander) {
    state.set_pulls(false);
  } else if (!needs_inner_) {
    state.set_pulls(false);  // a member keeps its own moments; only joiners download
    for (const auto& [name, t] : own) put_tensor(state, kInnerPrefix + name, t);
    put_tensor(state, kInnerStep, torch::tensor({trainer.inner_step()}, torch::kLong));
    // The run's progress, as in sync_run_state (the coordinator never elects a state behind it).
    state.set_revision(static_cast<uint64_t>(trainer.outer_rounds()));
  }
  net::SyncOpStats ss;
  const net::NetStatus st = comm_->sync_shared_state(state, &ss);
  stats->state_sync_s += ss.seconds;
  stats->state_bytes_downloaded += ss.bytes_downloaded;
  if (!st.is_ok()) return st;
  if (bystander) return st;
  if (needs_inner_ && !state.buffers().empty()) {
    auto fail = [&](const Status& why) {
      fatal_ = why.with_context("receiving an inner optimizer state");
      return net::NetStatus::error(net::NetCode::kProtocol, net::kNoPeer, why.message());
    };
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& [name, t] : own) {
      auto got = tensor_like(state, kInnerPrefix + name, t);
      if (!got) return fail(got.status());
      tensors.emplace_back(name, got.value());
    }
    auto step = tensor_like(state, kInnerStep, torch::zeros({1}, torch::kLong));
    if (!step) return fail(step.status());
    const std::string err = trainer.load_inner_state(tensors, step->data_ptr<int64_t>()[0]);
    if (!err.empty()) return fail(Status::error(err));
    if (options_.out) {
      std::fprintf(options_.out, "# received an inner optimizer state (AdamW step %lld), %.2f MB in %.3f s (%.2f Gbit/s)\n",
                   static_cast<long long>(step->data_ptr<int64_t>()[0]), ss.bytes_downloaded / 1e6, ss.transfer_seconds,
                   ss.gbit_per_s());
      std::fflush(options_.out);
    }
  }
  needs_inner_ = false;
  return st;
}

}  // namespace meridian::train
