// Seeded simulation of a run's control plane: the real CoordinatorState (src/coord) and N
// simulated peers that behave like net::Communicator (register, heartbeat, barrier, operations
// with a final status, reconnect and re-register), on one thread with a simulated clock and a
// simulated network (latency, jitter; a partition holds a link's messages until it heals, as
// TCP would). Faults, drawn from the seed: a peer crashes (SIGKILL: its connections close),
// freezes and thaws (SIGSTOP/SIGCONT: silence, its backlog delivered later), a link partitions,
// the coordinator crashes and restarts (a fresh CoordinatorState, a higher incarnation), a
// crashed peer is replaced by a fresh one.
//
// Invariants, checked after every event:
//   * one view per epoch: every M2C_View ever sent for an epoch has the same member list;
//   * no operation mixes epochs: a peer commits an operation only under the view of the
//     operation's epoch, only after every member of that view started it;
//   * one final status per operation: the peers that received a final status of an (epoch, op)
//     received the same value (a peer since removed from the run excepted, see observe_final);
//   * nobody waits forever: no live, running peer waits past its deadline (barrier, operation,
//     registration);
//   * shared-state sync (the first operation after every barrier is a sync, as a trainer does
//     at each outer step): the coordinator sends one set of elected hashes per sync, every
//     elected buffer was reported by a member with exactly that digest, and after an ok sync
//     every member's state equals the elected one; a sync never elects a revision behind the
//     last one elected (across coordinator restarts too) unless the coordinator declared that
//     state lost after its holder wait;
// and at the end, after the faults stop and a quiet period: every live peer is in the same
// view and has committed operations in it (the run goes on), syncs included; except when every
// holder of the run's state crashed and only fresh replacements are left: then the run must
// not go on (it would start over under round numbers it already has) and waits for a holder.
//
// A peer's state is modelled by its digests (net::PeerReport): the first peers start with the
// same state, replacements with none (late joiners); every committed all-reduce changes every
// member's state the same way (an outer step); a "stale" fault flips one buffer of one peer. A
// sync commits the elected digests when its simulated transfer succeeds (no member crashed,
// not interrupted), as StateSync commits before the final status.
//
// CI runs seeds 1..2000 (about 2 ms each; MERIDIAN_COORD_SIM_SEEDS=N runs more). A failure
// prints the seed; replay it with MERIDIAN_COORD_SIM_SEED=<seed> (and MERIDIAN_COORD_SIM_TRACE=1
// for a trace of every event).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "coord/coordinator_state.h"
#include "core/hash.h"
#include "net/state_sync/shared_state.h"

namespace {

using namespace meridian::coord;
namespace w = meridian::net::membership;
using meridian::SplitMix64;
namespace net = meridian::net;

constexpr int64_t kMs = 1000;
constexpr int64_t kHeartbeatTimeoutUs = 1000 * kMs;
constexpr int64_t kHolderWaitUs = 3 * kHeartbeatTimeoutUs;  // the run's state may be lost in a run
constexpr int64_t kHeartbeatIntervalUs = 250 * kMs;
constexpr int64_t kBarrierTimeoutUs = 8 * kHeartbeatTimeoutUs;
constexpr int64_t kOpTimeoutUs = 4 * kHeartbeatTimeoutUs;
constexpr int64_t kRegisterTimeoutUs = 2 * kHeartbeatTimeoutUs;
constexpr int64_t kReconnectBackoffUs = 50 * kMs;
constexpr int64_t kFaultPhaseUs = 20'000 * kMs;
constexpr int64_t kQuietPhaseUs = 20'000 * kMs;
constexpr int64_t kNever = INT64_MAX;
constexpr uint64_t kOpsPerOuterStep = 3;

struct Failure {
  std::string what;
};

enum class Activity { kIdle, kBarrier, kOp, kWaitFinal, kThink };

struct Msg {
  bool to_coordinator = false;
  ConnId conn = kNoConn;
  bool close = false;  // the connection closed (from the other side)
  w::ControlMessage message;
};

struct Peer {
  int index = 0;
  std::string address;
  bool down = false;           // crashed (for good)
  int64_t frozen_until = 0;    // > now: frozen
  // Control connection.
  ConnId conn = kNoConn;       // kNoConn: disconnected
  bool registered = false;
  int64_t reconnect_at = 0;
  int64_t register_deadline = kNever;
  int64_t next_heartbeat = 0;
  PeerId id = kNoPeer;
  w::View held;                // newest view heard of
  w::View adopted;             // adopted at the last barrier
  // Activity.
  Activity activity = Activity::kIdle;
  int64_t wait_deadline = kNever;
  uint32_t min_members = 0;
  uint64_t op_seq = 0;         // ops started in the adopted epoch
  std::pair<uint64_t, uint64_t> op{0, 0};
  bool interrupted = false;
  int64_t think_until = 0;
  uint64_t commits = 0;
  uint64_t commits_at_quiet = 0;
  std::optional<w::M2C_OpFinal> last_final;
  std::deque<Msg> backlog;  // delivered while frozen
  // Shared state (digests only) and the sync in progress.
  net::PeerReport state;
  bool op_is_sync = false;
  std::optional<w::C2M_SyncReport> sync_report;  // re-sent after a reconnect, as sent first
  std::optional<net::ElectedHashes> elected;
  bool votes = false;  // an ok sync since it was admitted (as net::Communicator keeps it)
};

bool same_state(const net::PeerReport& state, const net::ElectedHashes& e) {
  if (state.revision != e.revision || state.buffers.size() != e.buffers.size()) return false;
  for (size_t i = 0; i < e.buffers.size(); ++i) {
    const net::BufferDigest& b = state.buffers[i];
    if (b.name != e.buffers[i].name || b.bytes != e.buffers[i].bytes || !(b.hash == e.buffers[i].hash)) return false;
  }
  return true;
}

class Sim {
 public:
  Sim(uint64_t seed, bool trace) : rng_(seed), trace_(trace) {}

  void run() {
    const int n = 3 + static_cast<int>(rng_.next() % 4);  // 3..6 peers
    for (int i = 0; i < n; ++i) {
      add_peer(static_cast<uint32_t>(n));
      peers_.back().state.buffers = {{"opt", net::BufferDtype::kF32, 64, {1, 2}}, {"w", net::BufferDtype::kF32, 128, {3, 4}}};
    }
    start_coordinator();
    next_fault_ = now_ + fault_gap();
    const int64_t quiet_at = kFaultPhaseUs, end_at = kFaultPhaseUs + kQuietPhaseUs;
    bool quiet = false;
    for (uint64_t steps = 0;; ++steps) {
      if (steps > 2'000'000) fail("too many events: a livelock?");
      if (!quiet && now_ >= quiet_at) {
        quiet = true;
        heal_everything();
        for (Peer& p : peers_) p.commits_at_quiet = p.commits;
      }
      const int64_t t = next_time(quiet ? kNever : next_fault_);
      if (t >= end_at) break;
      now_ = std::max(now_, t);
      step(quiet);
      check_invariants();
    }
    check_progress();
  }

 private:
  // ---- the world ----------------------------------------------------------------------------

  void add_peer(uint32_t min_members) {
    Peer p;
    p.index = static_cast<int>(peers_.size());
    p.address = "10.0.0." + std::to_string(p.index) + ":4000";
    p.min_members = min_members;
    peers_.push_back(p);
  }

  // Progress never goes back: a sync elects a revision behind the run's (the last elected, as
  // the daemon's run log carries it across restarts) only once the coordinator declared it lost.
  void watch_progress(const Action& a) {
    if (a.text.rfind("LOST:", 0) == 0) loss_declared_ = true;
    if (a.event.kind != "sync" || !a.event.revision) return;
    if (*a.event.revision < logged_revision_ && !loss_declared_) {
      fail("a sync elected revision " + std::to_string(*a.event.revision) + " behind the run's " +
           std::to_string(logged_revision_) + " without declaring it lost");
    }
    logged_revision_ = *a.event.revision;
    loss_declared_ = false;
  }

  void start_coordinator() {
    CoordinatorConfig c;
    c.known_revision = logged_revision_;  // what the daemon reads from its run log
    c.holder_wait_us = kHolderWaitUs;
    c.heartbeat_timeout_us = kHeartbeatTimeoutUs;
    c.heartbeat_interval_us = kHeartbeatIntervalUs;
    c.incarnation = ++incarnation_;
    coordinator_.emplace(c);
    coord_open_.clear();
    trace("coordinator up, incarnation " + std::to_string(incarnation_));
  }

  int64_t fault_gap() { return 200 * kMs + static_cast<int64_t>(rng_.next() % (1500 * kMs)); }
  int64_t latency() { return 1 * kMs + static_cast<int64_t>(rng_.next() % (5 * kMs)); }

  void post(Msg m, int link_peer) {
    int64_t at = now_ + latency();
    at = std::max(at, partition_until_[link_peer]);       // a partition holds the link's messages
    at = std::max(at, last_delivery_[{link_peer, m.to_coordinator}] + 1);  // in order, like TCP
    last_delivery_[{link_peer, m.to_coordinator}] = at;
    queue_.emplace(std::make_pair(at, seq_++), std::make_pair(link_peer, std::move(m)));
  }

  void send_to_coordinator(Peer& p, w::ControlMessage m) {
    if (p.conn == kNoConn) return;
    post(Msg{true, p.conn, false, std::move(m)}, p.index);
  }

  int64_t next_time(int64_t next_fault) const {
    int64_t t = next_fault;
    if (!queue_.empty()) t = std::min(t, queue_.begin()->first.first);
    if (coordinator_) t = std::min(t, coordinator_->next_deadline_us());
    if (!coordinator_) t = std::min(t, coordinator_up_at_);
    for (const Peer& p : peers_) {
      if (p.down) continue;
      if (p.frozen_until > now_) {
        t = std::min(t, p.frozen_until);
        continue;
      }
      if (p.conn == kNoConn) t = std::min(t, p.reconnect_at);
      if (p.registered) t = std::min(t, p.next_heartbeat);
      t = std::min(t, p.register_deadline);
      t = std::min(t, p.wait_deadline);
      if (p.activity == Activity::kThink) t = std::min(t, p.think_until);
    }
    return t;
  }

  void step(bool quiet) {
    if (!quiet && now_ >= next_fault_) {
      inject_fault();
      next_fault_ = now_ + fault_gap();
      return;
    }
    if (!coordinator_ && now_ >= coordinator_up_at_) start_coordinator();
    // Deliver what is due.
    while (!queue_.empty() && queue_.begin()->first.first <= now_) {
      auto node = queue_.extract(queue_.begin());
      const int link = node.mapped().first;
      Msg m = std::move(node.mapped().second);
      if (m.to_coordinator) {
        deliver_to_coordinator(m);
      } else {
        Peer& p = peers_[link];
        if (p.down) continue;
        if (p.frozen_until > now_) {  // stays in the socket buffer until it thaws, in order
          p.backlog.push_back(std::move(m));
          continue;
        }
        deliver_to_peer(p, m);
      }
    }
    if (coordinator_ && now_ >= coordinator_->next_deadline_us()) apply(coordinator_->handle(EvTick{}, now_));
    for (Peer& p : peers_) {
      if (p.down || p.frozen_until > now_) continue;
      while (!p.backlog.empty() && p.frozen_until <= now_) {
        Msg m = std::move(p.backlog.front());
        p.backlog.pop_front();
        deliver_to_peer(p, m);
      }
      run_peer(p);
    }
  }

  void inject_fault() {
    const uint64_t r = rng_.next() % 100;
    std::vector<int> live;
    for (const Peer& p : peers_) {
      if (!p.down) live.push_back(p.index);
    }
    if (r < 15 && live.size() > 1) {  // crash a peer
      Peer& p = peers_[live[rng_.next() % live.size()]];
      trace("CRASH peer " + std::to_string(p.index));
      p.down = true;
      if (p.conn != kNoConn) post(Msg{true, p.conn, true, {}}, p.index);
    } else if (r < 30 && !live.empty()) {  // freeze a peer
      Peer& p = peers_[live[rng_.next() % live.size()]];
      const int64_t d = static_cast<int64_t>(rng_.next() % (3 * kHeartbeatTimeoutUs));
      p.frozen_until = std::max(p.frozen_until, now_ + d);
      trace("FREEZE peer " + std::to_string(p.index) + " for " + std::to_string(d / kMs) + " ms");
    } else if (r < 50 && !live.empty()) {  // partition a peer from the coordinator
      const int i = live[rng_.next() % live.size()];
      const int64_t d = static_cast<int64_t>(rng_.next() % (2 * kHeartbeatTimeoutUs));
      partition_until_[i] = std::max(partition_until_[i], now_ + d);
      trace("PARTITION peer " + std::to_string(i) + " for " + std::to_string(d / kMs) + " ms");
    } else if (r < 62 && coordinator_) {  // crash the coordinator; it restarts later
      trace("CRASH coordinator");
      coordinator_.reset();
      coordinator_up_at_ = now_ + static_cast<int64_t>(rng_.next() % (2 * kHeartbeatTimeoutUs));
      for (Peer& p : peers_) {
        if (!p.down && p.conn != kNoConn) post(Msg{false, p.conn, true, {}}, p.index);
      }
      coord_open_.clear();
    } else if (r < 72 && peers_.size() < 10 && live.size() < peers_.size()) {  // a replacement peer
      add_peer(0);
      trace("NEW peer " + std::to_string(peers_.size() - 1));
    } else if (r < 80 && !live.empty()) {  // one buffer of one peer goes stale
      Peer& p = peers_[live[rng_.next() % live.size()]];
      const bool syncing = p.op_is_sync && (p.activity == Activity::kOp || p.activity == Activity::kWaitFinal);
      if (!p.state.buffers.empty() && !syncing) {  // the state does not change during a sync call
        p.state.buffers[rng_.next() % p.state.buffers.size()].hash.lo ^= 0xdead;
        trace("STALE peer " + std::to_string(p.index));
      }
    }
    // else: nothing this time
  }

  void heal_everything() {
    trace("QUIET: faults stop");
    for (Peer& p : peers_) p.frozen_until = std::min(p.frozen_until, now_);
    for (auto& [i, t] : partition_until_) t = std::min(t, now_);
    if (!coordinator_) coordinator_up_at_ = now_;
  }

  // ---- the coordinator side -------------------------------------------------------------------

  void deliver_to_coordinator(const Msg& m) {
    if (!coordinator_ || coord_open_.count(m.conn) == 0) return;  // nobody there, or closed
    if (m.close) {
      coord_open_.erase(m.conn);
      apply(coordinator_->handle(EvDisconnected{m.conn, "closed"}, now_));
    } else {
      apply(coordinator_->handle(EvMessage{m.conn, m.message}, now_));
    }
  }

  void apply(const std::vector<Action>& actions) {
    for (const Action& a : actions) {
      if (a.kind == Action::Kind::kLog) {
        trace("  coord: " + a.text);
        watch_progress(a);
        continue;
      }
      if (coord_open_.count(a.conn) == 0) continue;
      const int link = peer_of_conn_.at(a.conn);
      if (a.kind == Action::Kind::kClose) {
        coord_open_.erase(a.conn);
        post(Msg{false, a.conn, true, {}}, link);
        continue;
      }
      record_sent(a.message);
      post(Msg{false, a.conn, false, a.message}, link);
    }
  }

  void record_sent(const w::ControlMessage& m) {
    if (const auto* e = std::get_if<w::M2C_SyncElected>(&m)) {
      const auto key = std::make_pair(e->epoch, e->op_id);
      auto [it, fresh] = elected_.emplace(key, *e);
      if (!fresh && !(it->second == *e)) fail("two different elections for sync " + std::to_string(e->op_id));
      // No invented data: every elected buffer was reported with exactly that digest by its holders.
      for (const net::ElectedBuffer& b : e->elected.buffers) {
        if (b.holders.empty()) fail("elected buffer '" + b.name + "' without a holder");
        for (PeerId h : b.holders) {
          auto r = reports_.find({key, h});
          if (r == reports_.end()) fail("elected holder " + std::to_string(h) + " never reported");
          const auto& bufs = r->second.buffers;
          const bool holds = std::any_of(bufs.begin(), bufs.end(), [&](const net::BufferDigest& d) {
            return d.name == b.name && d.hash == b.hash && d.bytes == b.bytes;
          });
          if (!holds) fail("holder " + std::to_string(h) + " of '" + b.name + "' reported another version");
        }
      }
      return;
    }
    if (const auto* v = std::get_if<w::M2C_View>(&m)) {
      auto [it, fresh] = views_.emplace(v->view.epoch, v->view);
      if (!fresh && it->second.members != v->view.members) {
        fail("two different views for epoch " + std::to_string(v->view.epoch));
      }
    } else if (const auto* f = std::get_if<w::M2C_OpFinal>(&m)) {
      if (f->ok) {  // ok only if every member of the epoch's view started it
        const auto v = views_.find(f->epoch);
        if (v == views_.end()) fail("final ok for an epoch without a view");
        for (const w::ViewMember& mem : v->second.members) {
          if (started_[{f->epoch, f->op_id}].count(mem.peer_id) == 0) {
            fail("final ok for op " + std::to_string(f->op_id) + " that peer " + std::to_string(mem.peer_id) +
                 " never started");
          }
        }
      }
    }
  }

  // One final status per operation, as the peers see it. The one exception the protocol
  // allows: a peer removed from the run (it stayed away past the heartbeat timeout while a
  // restarted coordinator decided) may have been told otherwise; it re-joins as a new member.
  void observe_final(const Peer& p, const w::M2C_OpFinal& f) {
    const auto key = std::make_pair(f.epoch, f.op_id);
    auto [it, fresh] = finals_seen_.emplace(key, std::make_pair(f.ok, p.index));
    if (fresh || it->second.first == f.ok) return;
    const Peer& other = peers_[it->second.second];
    if (still_member(p) && still_member(other)) {
      fail("peers " + std::to_string(other.index) + " and " + std::to_string(p.index) + " were told different final statuses for op " +
           std::to_string(f.op_id) + " of epoch " + std::to_string(f.epoch));
    }
  }
  bool still_member(const Peer& p) const {
    if (p.down || !coordinator_) return !p.down;
    for (const w::ViewMember& m : coordinator_->view().members) {
      if (m.peer_id == p.id && m.address == p.address) return true;
    }
    return false;
  }

  // ---- the peer side (what net::Communicator does) -------------------------------------------

  void deliver_to_peer(Peer& p, const Msg& m) {
    if (m.conn != p.conn) return;  // an old connection
    if (m.close) {
      trace("peer " + std::to_string(p.index) + ": connection closed");
      disconnect(p);
      return;
    }
    if (const auto* wel = std::get_if<w::M2C_Welcome>(&m.message)) {
      p.id = wel->peer_id;
      p.registered = true;
      p.register_deadline = kNever;
      p.next_heartbeat = now_;
      trace("peer " + std::to_string(p.index) + ": registered as " + std::to_string(p.id));
      if (p.activity == Activity::kBarrier) send_to_coordinator(p, w::C2M_UpdateTopology{p.adopted.epoch, p.min_members});
      if ((p.activity == Activity::kOp || p.activity == Activity::kWaitFinal) && p.op_is_sync && p.sync_report) {
        send_to_coordinator(p, *p.sync_report);
        if (p.activity == Activity::kWaitFinal) send_to_coordinator(p, w::C2M_OpResult{p.op.first, p.op.second, true, ""});
      } else if (p.activity == Activity::kOp || p.activity == Activity::kWaitFinal) {
        send_to_coordinator(p, w::C2M_OpBegin{p.op.first, p.op.second});
        if (p.activity == Activity::kWaitFinal) send_to_coordinator(p, w::C2M_OpResult{p.op.first, p.op.second, true, ""});
      }
    } else if (const auto* v = std::get_if<w::M2C_View>(&m.message)) {
      if (v->view.epoch >= p.held.epoch) p.held = v->view;
      if (p.activity == Activity::kOp && v->view.epoch > p.op.first) p.interrupted = true;
      if (v->barrier && p.activity == Activity::kBarrier) adopt(p, v->view);
    } else if (const auto* e = std::get_if<w::M2C_SyncElected>(&m.message)) {
      if (p.activity == Activity::kOp && p.op_is_sync && std::make_pair(e->epoch, e->op_id) == p.op && !p.elected) {
        p.elected = e->elected;
      }
    } else if (const auto* f = std::get_if<w::M2C_OpFinal>(&m.message)) {
      p.last_final = *f;
      observe_final(p, *f);
      const bool mine = std::make_pair(f->epoch, f->op_id) == p.op;
      if (mine && p.activity == Activity::kOp && !f->ok) p.interrupted = true;
      if (mine && p.activity == Activity::kWaitFinal) {
        if (f->ok) {
          commit(p);
        } else {
          to_idle(p);
        }
      }
    }
  }

  void disconnect(Peer& p) {
    p.conn = kNoConn;
    p.registered = false;
    p.register_deadline = kNever;
    p.reconnect_at = now_ + kReconnectBackoffUs;
  }

  void to_idle(Peer& p) {
    p.activity = Activity::kIdle;
    p.wait_deadline = kNever;
  }

  void adopt(Peer& p, const w::View& v) {
    bool member = false;
    for (const w::ViewMember& m : v.members) member |= m.peer_id == p.id;
    if (!member) return to_idle(p);  // retry the barrier
    bool was_member = false;
    for (const w::ViewMember& m : p.adopted.members) was_member |= m.peer_id == p.id;
    if (!was_member) p.votes = false;
    p.op_seq = 0;  // operations are numbered afresh after every barrier (View::round)
    p.adopted = v;
    p.min_members = 0;
    trace("peer " + std::to_string(p.index) + ": adopted epoch " + std::to_string(v.epoch) + " (" +
          std::to_string(v.members.size()) + " members)");
    start_op(p, /*sync=*/true);
  }

  void start_op(Peer& p, bool sync = false) {
    p.activity = Activity::kOp;
    p.op = {p.adopted.epoch, (p.adopted.round << 32) | ++p.op_seq};
    p.interrupted = false;
    p.wait_deadline = now_ + kOpTimeoutUs;
    started_[p.op].insert(p.id);
    started_epoch_of_[{p.op, p.id}] = p.adopted.epoch;
    p.op_is_sync = sync;
    p.elected.reset();
    p.sync_report.reset();
    if (!sync) {
      send_to_coordinator(p, w::C2M_OpBegin{p.op.first, p.op.second});
      return;
    }
    net::PeerReport report = p.state;
    report.votes = !report.buffers.empty() && p.votes;
    p.sync_report = w::C2M_SyncReport{p.op.first, p.op.second, report};
    reports_[{p.op, p.id}] = report;
    send_to_coordinator(p, *p.sync_report);
  }

  void commit(Peer& p) {
    // No operation mixes epochs: committed under the view of its own epoch, which every member started.
    if (p.adopted.epoch != p.op.first) fail("peer committed op of epoch " + std::to_string(p.op.first) + " under epoch " + std::to_string(p.adopted.epoch));
    for (const w::ViewMember& m : p.adopted.members) {
      auto it = started_epoch_of_.find({p.op, m.peer_id});
      if (it == started_epoch_of_.end() || it->second != p.op.first) fail("op committed that a member did not start in this epoch");
    }
    if (p.op_is_sync) {  // after an ok sync every member holds the elected state
      if (!p.elected || !same_state(p.state, *p.elected)) {
        fail("peer " + std::to_string(p.index) + " ended sync " + std::to_string(p.op.second) + " ok without the elected state");
      }
      p.votes = true;
    } else {  // an outer step: every member changes its state the same way
      ++p.state.revision;
      for (net::BufferDigest& b : p.state.buffers) b.hash.lo = b.hash.lo * 0x9e3779b97f4a7c15ull + p.op.second;
    }
    ++p.commits;
    p.activity = Activity::kThink;
    p.think_until = now_ + 50 * kMs + static_cast<int64_t>(rng_.next() % (200 * kMs));
    p.wait_deadline = kNever;
  }

  // Which member of the peer's view is gone for good, as its mesh would notice (a reset).
  bool member_crashed(const Peer& p) const {
    for (const w::ViewMember& m : p.adopted.members) {
      for (const Peer& q : peers_) {
        if (q.id == m.peer_id && q.address == m.address && q.down) return true;
      }
    }
    return false;
  }

  bool all_members_started(const Peer& p) const {
    auto it = started_.find(p.op);
    if (it == started_.end()) return false;
    for (const w::ViewMember& m : p.adopted.members) {
      if (it->second.count(m.peer_id) == 0) return false;
    }
    return true;
  }

  void run_peer(Peer& p) {
    if (p.conn == kNoConn && now_ >= p.reconnect_at) {
      if (!coordinator_) {
        p.reconnect_at = now_ + kReconnectBackoffUs;  // refused: back off
      } else {
        p.conn = next_conn_++;
        peer_of_conn_[p.conn] = p.index;
        coord_open_.insert(p.conn);
        p.register_deadline = now_ + kRegisterTimeoutUs;
        w::C2M_Join join{p.id, p.address, p.held};
        if (p.last_final) {
          join.last_final_epoch = p.last_final->epoch;
          join.last_final_op_id = p.last_final->op_id;
          join.last_final_ok = p.last_final->ok;
        }
        send_to_coordinator(p, join);
      }
    }
    if (p.conn != kNoConn && !p.registered && now_ >= p.register_deadline) {  // gave up on this attempt
      post(Msg{true, p.conn, true, {}}, p.index);
      disconnect(p);
    }
    if (p.registered && now_ >= p.next_heartbeat) {
      send_to_coordinator(p, w::C2M_Heartbeat{});
      p.next_heartbeat = now_ + kHeartbeatIntervalUs;
    }
    switch (p.activity) {
      case Activity::kThink:
        if (now_ < p.think_until) break;
        // Like a trainer, call update_topology at every outer step (every kOpsPerOuterStep
        // operations), and at once when a newer view was pushed.
        if (p.held.epoch > p.adopted.epoch || (p.op_seq & 0xffffffffu) % kOpsPerOuterStep == 0) {
          to_idle(p);
        } else {
          start_op(p);
        }
        break;
      case Activity::kIdle:
        if (!p.registered) break;
        p.activity = Activity::kBarrier;
        p.wait_deadline = now_ + kBarrierTimeoutUs;
        send_to_coordinator(p, w::C2M_UpdateTopology{p.adopted.epoch, p.min_members});
        break;
      case Activity::kBarrier:
        if (now_ >= p.wait_deadline) to_idle(p);  // update_topology timed out; try again
        break;
      case Activity::kOp: {
        const bool failed = p.interrupted || member_crashed(p) || now_ >= p.wait_deadline;
        if (failed) {
          trace("peer " + std::to_string(p.index) + ": op failed (" +
                (p.interrupted ? "interrupted" : member_crashed(p) ? "a member crashed" : "timeout") + ")");
          send_to_coordinator(p, w::C2M_OpResult{p.op.first, p.op.second, false, "local failure"});
          to_idle(p);
        } else if (p.op_is_sync && p.elected) {
          // The transfer: no member crashed and nobody interrupted us, so it completes; commit
          // the elected digests (what StateSync does after verifying every hash).
          p.state.revision = p.elected->revision;
          p.state.buffers.clear();
          for (const net::ElectedBuffer& b : p.elected->buffers) p.state.buffers.push_back({b.name, b.dtype, b.bytes, b.hash});
          send_to_coordinator(p, w::C2M_OpResult{p.op.first, p.op.second, true, ""});
          p.activity = Activity::kWaitFinal;
        } else if (!p.op_is_sync && all_members_started(p)) {
          send_to_coordinator(p, w::C2M_OpResult{p.op.first, p.op.second, true, ""});
          p.activity = Activity::kWaitFinal;
        }
        break;
      }
      case Activity::kWaitFinal:
        if (now_ >= p.wait_deadline) to_idle(p);  // no final status in time: an error
        break;
    }
  }

  // ---- invariants ---------------------------------------------------------------------------

  void check_invariants() {
    for (const Peer& p : peers_) {
      if (p.down || p.frozen_until > now_) continue;
      if (p.wait_deadline != kNever && now_ > p.wait_deadline) fail("peer " + std::to_string(p.index) + " waits past its deadline");
      if (p.register_deadline != kNever && now_ > p.register_deadline) fail("peer " + std::to_string(p.index) + " registration waits forever");
      if (p.adopted.epoch > 0) {
        const auto v = views_.find(p.adopted.epoch);
        if (v == views_.end() || v->second.members != p.adopted.members) fail("peer adopted a view that was never published");
      }
    }
  }

  void check_progress() {
    // Every live peer is fresh while the run has progress: nothing may be elected, so the
    // run waits (for a holder, or a node resumed from a checkpoint) instead of going on.
    const bool state_gone = logged_revision_ > 0 && std::none_of(peers_.begin(), peers_.end(), [](const Peer& p) {
                              return !p.down && !p.state.buffers.empty();
                            });
    if (state_gone) {
      for (const Peer& p : peers_)
        if (!p.down && p.commits > p.commits_at_quiet + 2 && p.state.revision > 0)
          fail("peer " + std::to_string(p.index) + " went on from a run state nobody held");
      return;
    }
    uint64_t epoch = 0;
    for (const Peer& p : peers_) {
      if (p.down) continue;
      if (p.commits <= p.commits_at_quiet + 2) {
        fail("peer " + std::to_string(p.index) + " made no progress after the faults stopped (activity " +
             std::to_string(static_cast<int>(p.activity)) + ", epoch " + std::to_string(p.adopted.epoch) + ")");
      }
      if (epoch == 0) epoch = p.adopted.epoch;
      if (p.adopted.epoch != epoch) fail("live peers ended in different views");
    }
  }

  [[noreturn]] void fail(const std::string& what) {
    throw Failure{"t=" + std::to_string(now_ / kMs) + " ms: " + what};
  }
  void trace(const std::string& line) const {
    if (trace_) std::printf("[%8.3f s] %s\n", now_ / 1e6, line.c_str());
  }

  SplitMix64 rng_;
  bool trace_;
  int64_t now_ = 0;
  uint64_t seq_ = 0;
  std::optional<CoordinatorState> coordinator_;
  uint64_t incarnation_ = 0;
  int64_t coordinator_up_at_ = 0;
  uint64_t logged_revision_ = 0;  // of the last "sync" event
  bool loss_declared_ = false;
  std::set<ConnId> coord_open_;  // connections the coordinator has open
  std::map<ConnId, int> peer_of_conn_;
  ConnId next_conn_ = 1;
  std::vector<Peer> peers_;
  std::map<int, int64_t> partition_until_;
  std::map<std::pair<int, bool>, int64_t> last_delivery_;
  std::map<std::pair<int64_t, uint64_t>, std::pair<int, Msg>> queue_;
  int64_t next_fault_ = 0;
  // Records for the invariants.
  std::map<uint64_t, w::View> views_;
  std::map<std::pair<uint64_t, uint64_t>, std::pair<bool, int>> finals_seen_;  // value, first observer
  std::map<std::pair<uint64_t, uint64_t>, std::set<PeerId>> started_;
  std::map<std::pair<std::pair<uint64_t, uint64_t>, PeerId>, uint64_t> started_epoch_of_;
  std::map<std::pair<uint64_t, uint64_t>, w::M2C_SyncElected> elected_;
  std::map<std::pair<std::pair<uint64_t, uint64_t>, PeerId>, net::PeerReport> reports_;
};

TEST(CoordSim, SeededFaultsKeepTheInvariants) {
  const char* only = std::getenv("MERIDIAN_COORD_SIM_SEED");
  const bool trace = std::getenv("MERIDIAN_COORD_SIM_TRACE") != nullptr;
  const char* count_env = std::getenv("MERIDIAN_COORD_SIM_SEEDS");
  const uint64_t first = only ? std::strtoull(only, nullptr, 10) : 1;
  const uint64_t count = only ? 1 : (count_env ? std::strtoull(count_env, nullptr, 10) : 2000);
  uint64_t failed = 0;
  for (uint64_t seed = first; seed < first + count; ++seed) {
    try {
      Sim(seed, trace).run();
    } catch (const Failure& f) {
      ++failed;
      ADD_FAILURE() << "seed " << seed << ": " << f.what << "\n  replay: MERIDIAN_COORD_SIM_SEED=" << seed
                    << " MERIDIAN_COORD_SIM_TRACE=1 " << ::testing::internal::GetArgvs()[0];
      if (failed >= 5) break;
    }
  }
  std::printf("coord sim: %llu seeds, %llu failed\n", static_cast<unsigned long long>(count),
              static_cast<unsigned long long>(failed));
}

}  // namespace
