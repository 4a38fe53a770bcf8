#include "coord/coordinator_state.h"

#include <algorithm>
#include <climits>

#include "core/assert.h"

namespace meridian::coord {

Action Action::send(ConnId conn, wire::ControlMessage message) {
  Action a;
  a.kind = Kind::kSend;
  a.conn = conn;
  a.message = std::move(message);
  return a;
}

Action Action::close(ConnId conn, std::string why) {
  Action a;
  a.kind = Kind::kClose;
  a.conn = conn;
  a.text = std::move(why);
  return a;
}

Action Action::log(std::string line, LogEvent event) {
  Action a;
  a.text = std::move(line);
  a.event = std::move(event);
  return a;
}

const char* phase_name(Phase phase) {
  switch (phase) {
    case Phase::kEmpty: return "empty";
    case Phase::kStable: return "stable";
    case Phase::kBarrier: return "barrier";
  }
  return "?";
}

CoordinatorState::CoordinatorState(const CoordinatorConfig& config) : config_(config) {
  MERIDIAN_ASSERT(config.heartbeat_timeout_us > 0 && config.heartbeat_interval_us > 0 &&
                      config.heartbeat_interval_us < config.heartbeat_timeout_us,
                  "heartbeat interval {} us must be below the timeout {} us", config.heartbeat_interval_us,
                  config.heartbeat_timeout_us);
  run_revision_ = config.known_revision;
}

size_t CoordinatorState::joiner_count() const {
  return static_cast<size_t>(std::count_if(peers_.begin(), peers_.end(),
                                           [](const auto& p) { return p.second.phase == PeerPhase::kJoining; }));
}

std::optional<bool> CoordinatorState::final_of(uint64_t epoch, uint64_t op_id) const {
  auto it = ops_.find({epoch, op_id});
  if (it == ops_.end() || !it->second.final_sent) return std::nullopt;
  return it->second.final_ok;
}

int64_t CoordinatorState::next_deadline_us() const {
  int64_t t = INT64_MAX;
  for (const auto& [id, p] : peers_) t = std::min(t, p.last_heard_us + config_.heartbeat_timeout_us);
  if (in_restart_grace()) t = std::min(t, first_event_us_ + config_.heartbeat_timeout_us);
  return t;
}

// A restarted coordinator of a run with progress (its run log names a revision) knows no view
// until a member re-registers with the one it holds. A joiner that registers first must not be
// admitted into a view of its own meanwhile: the members coming back a moment later would then
// be joiners too, admitted mid-round beside a node at its round start. So for one heartbeat
// timeout from its start, while it has neither re-created nor published a view, it admits
// nobody; a member re-attaching ends the wait, and so does the timeout (the members are gone).
bool CoordinatorState::in_restart_grace() const {
  return config_.known_revision > 0 && !published_ && !restored_ && first_event_us_ >= 0 &&
         now_us_ - first_event_us_ < config_.heartbeat_timeout_us;
}

CoordinatorState::PeerRecord* CoordinatorState::peer_on(ConnId conn) {
  auto it = peer_of_conn_.find(conn);
  if (it == peer_of_conn_.end()) return nullptr;
  auto p = peers_.find(it->second);
  return p == peers_.end() ? nullptr : &p->second;
}

std::vector<Action> CoordinatorState::handle(const Event& event, int64_t now_us) {
  Out out;
  now_us_ = now_us;
  if (first_event_us_ < 0) first_event_us_ = now_us;
  if (const auto* m = std::get_if<EvMessage>(&event)) {
    on_message(m->conn, m->message, now_us, out);
  } else if (const auto* d = std::get_if<EvDisconnected>(&event)) {
    if (PeerRecord* p = peer_on(d->conn)) {
      const PeerId id = p->id;
      peer_of_conn_.erase(d->conn);
      p->conn = kNoConn;
      remove_peer(id, "closed", "connection lost (" + d->reason + ")", out);
    }
    peer_of_conn_.erase(d->conn);
  } else {  // EvTick: evict the silent
    std::vector<PeerId> silent;
    for (const auto& [id, p] : peers_) {
      if (now_us - p.last_heard_us >= config_.heartbeat_timeout_us) silent.push_back(id);
    }
    for (PeerId id : silent) {
      const int64_t ms = (now_us - peers_[id].last_heard_us) / 1000;
      remove_peer(id, "evicted", "silent for " + std::to_string(ms) + " ms (heartbeat timeout " +
                          std::to_string(config_.heartbeat_timeout_us / 1000) + " ms)", out);
    }
    try_complete_barrier(out);  // a barrier held by the restart grace may complete now
  }
  update_phase();
  check_consistency();
  return out;
}

// The member records are exactly the view's members, with the view's addresses.
void CoordinatorState::check_consistency() const {
  size_t members = 0;
  for (const auto& [id, p] : peers_) members += p.phase == PeerPhase::kMember ? 1 : 0;
  MERIDIAN_ASSERT(members == view_.members.size(), "{} member records for a view of {} (epoch {})", members,
                  view_.members.size(), view_.epoch);
  for (const wire::ViewMember& m : view_.members) {
    auto it = peers_.find(m.peer_id);
    MERIDIAN_ASSERT(it != peers_.end() && it->second.phase == PeerPhase::kMember && it->second.address == m.address,
                    "view member {} of epoch {} has no member record", m.peer_id, view_.epoch);
  }
}

void CoordinatorState::on_message(ConnId conn, const wire::ControlMessage& message, int64_t now_us, Out& out) {
  if (const auto* join = std::get_if<wire::C2M_Join>(&message)) {
    if (peer_on(conn) != nullptr) {
      out.push_back(Action::close(conn, "C2M_Join twice on one connection"));
      return;
    }
    on_join(conn, *join, now_us, out);
    return;
  }
  PeerRecord* p = peer_on(conn);
  if (p == nullptr) {
    out.push_back(Action::close(conn, std::string(wire::message_name(message)) + " before C2M_Join"));
    return;
  }
  p->last_heard_us = now_us;
  const PeerId id = p->id;
  if (std::holds_alternative<wire::C2M_Heartbeat>(message)) return;
  if (const auto* u = std::get_if<wire::C2M_UpdateTopology>(&message)) {
    if (p->phase == PeerPhase::kJoining && !p->at_barrier) {
      LogEvent e;
      e.kind = "waiting";
      e.peer = id;
      out.push_back(Action::log("joiner " + std::to_string(id) + " at the barrier", std::move(e)));
    }
    p->at_barrier = true;
    p->min_members = u->min_members;
    p->admit_joiners = u->admit_joiners;
    try_complete_barrier(out);
    return;
  }
  if (std::holds_alternative<wire::C2M_Leave>(message)) {
    remove_peer(id, "left", "left", out);
    return;
  }
  if (const auto* b = std::get_if<wire::C2M_OpBegin>(&message)) return on_op_begin(id, *b, out);
  if (const auto* r = std::get_if<wire::C2M_OpResult>(&message)) return on_op_result(id, *r, out);
  if (const auto* s = std::get_if<wire::C2M_SyncReport>(&message)) {
    // decode_message checks the same; a report that breaks it would trip elect()'s asserts.
    if (std::string why; !wire::sync_report_fits(s->report, &why)) {
      out.push_back(Action::close(conn, "malformed C2M_SyncReport: " + why));
      return;
    }
    return on_sync_report(id, *s, out);
  }
  out.push_back(Action::close(conn, std::string("unexpected ") + wire::message_name(message) + " from a peer"));
}

void CoordinatorState::on_join(ConnId conn, const wire::C2M_Join& join, int64_t now_us, Out& out) {
  const PeerId prev = join.previous_peer_id;
  const wire::View& held = join.last_view;
  const bool holds_view = prev != kNoPeer && held.epoch > 0 &&
                          std::any_of(held.members.begin(), held.members.end(),
                                      [&](const wire::ViewMember& m) { return m.peer_id == prev; });
  // Re-create a view after a restart: the peer's view is newer than ours, and ours is either
  // nothing or itself only re-created (nobody has completed a barrier since).
  if (holds_view && held.epoch > view_.epoch &&
      (restored_ || std::none_of(peers_.begin(), peers_.end(),
                                 [](const auto& e) { return e.second.phase == PeerPhase::kMember; }))) {
    // Members of an older re-created view that are not in this one: forgotten if they never
    // reconnected, joiners if they did.
    for (auto it = peers_.begin(); it != peers_.end();) {
      const bool in_held = std::any_of(held.members.begin(), held.members.end(),
                                       [&](const wire::ViewMember& m) { return m.peer_id == it->first; });
      if (it->second.phase == PeerPhase::kMember && !in_held && it->second.conn == kNoConn) {
        it = peers_.erase(it);
        continue;
      }
      if (it->second.phase == PeerPhase::kMember && !in_held) it->second.phase = PeerPhase::kJoining;
      ++it;
    }
    view_ = held;
    restored_ = true;
    for (const wire::ViewMember& m : held.members) {
      auto clash = peers_.find(m.peer_id);
      if (clash != peers_.end() && clash->second.address != m.address) {
        // This incarnation gave the id to a newcomer before it learnt the view: the view wins,
        // the newcomer registers again and gets a fresh id.
        if (clash->second.conn != kNoConn) {
          out.push_back(Action::close(clash->second.conn, "peer id " + std::to_string(m.peer_id) +
                                                              " belongs to a member of the re-created view; register again"));
          peer_of_conn_.erase(clash->second.conn);
        }
        peers_.erase(clash);
      }
      PeerRecord& r = peers_[m.peer_id];
      r.id = m.peer_id;
      r.address = m.address;
      r.rank_addresses = m.rank_addresses;
      r.phase = PeerPhase::kMember;
      if (r.conn == kNoConn) r.last_heard_us = now_us;  // absent ones get one timeout to come back
      next_peer_id_ = std::max(next_peer_id_, m.peer_id + 1);
    }
    LogEvent e = view_event("recreated");
    e.peer = prev;
    out.push_back(Action::log("re-created view epoch " + std::to_string(view_.epoch) + " (" +
                                  std::to_string(view_.members.size()) + " members) from re-registering peer " +
                                  std::to_string(prev),
                              std::move(e)));
    tell_joiners(out);
  }
  PeerId id = kNoPeer;
  auto existing = prev != kNoPeer ? peers_.find(prev) : peers_.end();
  if (holds_view && held.epoch == view_.epoch) {
    // Rounds already used in this epoch must not be used again: the next barrier goes above
    // every round a member has seen.
    view_.round = std::max(view_.round, held.round);
  }
  if (existing != peers_.end() && existing->second.phase == PeerPhase::kMember &&
      existing->second.address == join.listen_address) {
    // A member re-attaching: after a restart, or a reconnect that overtook the close of its
    // old connection (which is dropped now).
    id = prev;
    if (existing->second.conn != kNoConn) {
      out.push_back(Action::close(existing->second.conn, "replaced by a new connection of peer " + std::to_string(id)));
      peer_of_conn_.erase(existing->second.conn);
    }
  } else {
    const bool prev_free = prev != kNoPeer && peers_.count(prev) == 0 &&
                           std::none_of(view_.members.begin(), view_.members.end(),
                                        [&](const wire::ViewMember& m) { return m.peer_id == prev; });
    id = prev_free ? prev : next_peer_id_;  // a returning peer keeps its id when nobody holds it
    if (existing != peers_.end() && existing->second.phase == PeerPhase::kJoining &&
        existing->second.address == join.listen_address) {
      id = prev;  // a joiner re-registering
      if (existing->second.conn != kNoConn) {
        out.push_back(Action::close(existing->second.conn, "replaced by a new connection of peer " + std::to_string(id)));
        peer_of_conn_.erase(existing->second.conn);
      }
    }
    PeerRecord r;
    r.id = id;
    r.address = join.listen_address;
    r.rank_addresses = join.rank_addresses;
    r.phase = PeerPhase::kJoining;
    peers_[id] = r;
  }
  next_peer_id_ = std::max(next_peer_id_, id + 1);
  PeerRecord& r = peers_[id];
  r.conn = conn;
  r.last_heard_us = now_us;
  r.at_barrier = false;
  peer_of_conn_[conn] = id;
  wire::M2C_Welcome welcome;
  welcome.peer_id = id;
  welcome.heartbeat_interval_ms = static_cast<uint32_t>(config_.heartbeat_interval_us / 1000);
  welcome.heartbeat_timeout_ms = static_cast<uint32_t>(config_.heartbeat_timeout_us / 1000);
  out.push_back(Action::send(conn, welcome));
  if (join.last_final_op_id != 0 && join.last_final_epoch == view_.epoch) {
    learn_final(join.last_final_epoch, join.last_final_op_id, join.last_final_ok, id, out);
  }
  LogEvent e;
  e.peer = id;
  e.address = r.address;
  if (r.phase == PeerPhase::kMember) {
    out.push_back(Action::send(conn, wire::M2C_View{view_, false}));
    e.kind = "reattached";
    e.epoch = view_.epoch;
    out.push_back(Action::log("peer " + std::to_string(id) + " at " + r.address + " re-attached to view epoch " +
                                  std::to_string(view_.epoch),
                              std::move(e)));
  } else {
    e.kind = "registered";
    if (!view_.members.empty()) out.push_back(Action::send(conn, wire::M2C_View{view_, false}));
    out.push_back(Action::log("peer " + std::to_string(id) + " at " + r.address + " registered; waits for the barrier",
                              std::move(e)));
  }
}

void CoordinatorState::remove_peer(PeerId peer, const char* kind, const std::string& why, Out& out) {
  auto it = peers_.find(peer);
  if (it == peers_.end()) return;
  const bool was_member = it->second.phase == PeerPhase::kMember;
  if (it->second.conn != kNoConn) {
    // Close it: a peer that was only frozen must not go on as if it were still registered;
    // when it wakes up it reconnects and registers again, as a joiner.
    out.push_back(Action::close(it->second.conn, "removed: " + why));
    peer_of_conn_.erase(it->second.conn);
  }
  const std::string address = it->second.address;
  peers_.erase(it);
  LogEvent e;
  e.kind = kind;
  e.peer = peer;
  e.address = address;
  e.reason = why;
  out.push_back(Action::log("peer " + std::to_string(peer) + " at " + address + " removed: " + why, std::move(e)));
  if (!was_member) return;
  std::vector<wire::ViewMember> members;
  for (const wire::ViewMember& m : view_.members) {
    if (m.peer_id != peer) members.push_back(m);
  }
  publish_view(std::move(members), "peer " + std::to_string(peer) + " " + why, out);
  try_complete_barrier(out);
}

// A new epoch: ops of the old one that are not final are aborted, the remaining members learn
// the view at once (not as a barrier answer).
void CoordinatorState::publish_view(std::vector<wire::ViewMember> members, const std::string& why, Out& out) {
  const uint64_t epoch = next_epoch();
  abort_ops_before(epoch, "view changed: " + why, out);
  view_.epoch = epoch;
  view_.round = 0;
  view_.members = std::move(members);
  restored_ = false;
  LogEvent e = view_event("view");
  e.reason = why;
  out.push_back(Action::log("view epoch " + std::to_string(view_.epoch) + ": " + std::to_string(view_.members.size()) +
                                " members (" + why + ")",
                            std::move(e)));
  send_to_members(wire::M2C_View{view_, false}, out);
  tell_joiners(out);
}

LogEvent CoordinatorState::view_event(const char* kind) const {
  LogEvent e;
  e.kind = kind;
  e.epoch = view_.epoch;
  e.round = view_.round;
  e.size = view_.members.size();
  std::vector<PeerId> members;
  for (const wire::ViewMember& m : view_.members) members.push_back(m.peer_id);
  e.members = std::move(members);
  return e;
}

uint64_t CoordinatorState::next_epoch() {
  uint64_t epoch = view_.epoch + 1;
  if (!published_) epoch = std::max(epoch, config_.incarnation << kEpochSequenceBits);
  published_ = true;
  return epoch;
}

void CoordinatorState::try_complete_barrier(Out& out) {
  size_t members = 0, members_waiting = 0, joiners_waiting = 0;
  uint32_t need = 0;
  bool admit = true;
  for (const auto& [id, p] : peers_) {
    if (p.phase == PeerPhase::kMember) {
      ++members;
      members_waiting += p.at_barrier ? 1 : 0;
      admit &= p.admit_joiners;
    } else if (p.at_barrier) {
      ++joiners_waiting;
    }
    if (p.at_barrier) need = std::max(need, p.min_members);
  }
  if (members_waiting < members) return;          // a member has not called update_topology yet
  if (members + joiners_waiting == 0) return;     // nobody waits
  if (members == 0 && in_restart_grace()) return;  // the run's members may still re-attach
  if (members + joiners_waiting < need) return;   // bootstrap: not enough peers yet
  uint32_t held_back = 0;  // told to the members, who may meet again to admit them
  if (members > 0 && !admit) {  // a retry mid-round: joiners wait for the next barrier
    held_back = static_cast<uint32_t>(joiners_waiting);
    joiners_waiting = 0;
  }
  if (joiners_waiting > 0) {
    std::vector<wire::ViewMember> next = view_.members;
    std::string who;
    std::vector<PeerId> admitted;
    for (auto& [id, p] : peers_) {
      if (p.phase == PeerPhase::kJoining && p.at_barrier) {
        p.phase = PeerPhase::kMember;
        p.unsynced = true;
        next.push_back(wire::ViewMember{id, p.address, p.rank_addresses});
        who += " " + std::to_string(id);
        admitted.push_back(id);
      }
    }
    // Joiners are appended in id order (peers_ is ordered), members keep their ranks.
    const uint64_t epoch = next_epoch();
    abort_ops_before(epoch, "view changed: peers joined", out);
    view_.epoch = epoch;
    view_.members = std::move(next);
    LogEvent e = view_event("admitted");
    e.round.reset();  // set below: round 1 of the new epoch
    e.admitted = std::move(admitted);
    out.push_back(Action::log("view epoch " + std::to_string(view_.epoch) + ": " + std::to_string(view_.members.size()) +
                                  " members (admitted" + who + ")",
                              std::move(e)));
  }
  view_.round = joiners_waiting > 0 ? 1 : view_.round + 1;  // a fresh numbering of operations
  restored_ = false;
  LogEvent round = view_event("round");
  round.members.reset();  // every barrier logs: the count only, the list is in admitted/view
  out.push_back(Action::log("barrier done: epoch " + std::to_string(view_.epoch) + " round " +
                                std::to_string(view_.round) + ", " + std::to_string(view_.members.size()) + " members",
                            std::move(round)));
  for (auto& [id, p] : peers_) {
    if (p.phase == PeerPhase::kMember) {
      p.at_barrier = false;
      if (p.conn != kNoConn) out.push_back(Action::send(p.conn, wire::M2C_View{view_, true, held_back}));
    }
  }
  tell_joiners(out);
}

void CoordinatorState::on_op_begin(PeerId peer, const wire::C2M_OpBegin& m, Out& out) {
  const OpKey key{m.epoch, m.op_id};
  auto it = ops_.find(key);
  if (it == ops_.end()) {
    OpRecord op;
    op.epoch = m.epoch;
    it = ops_.emplace(key, std::move(op)).first;
    if (m.epoch != view_.epoch) {
      finish_op(key, it->second, false, "operation of epoch " + std::to_string(m.epoch) + " but the view is epoch " +
                                            std::to_string(view_.epoch), out);
    }
  }
  if (it->second.final_sent) {  // tell this peer too
    const auto c = peers_.find(peer);
    if (c != peers_.end() && c->second.conn != kNoConn) {
      out.push_back(Action::send(c->second.conn, wire::M2C_OpFinal{it->second.epoch, m.op_id, it->second.final_ok,
                                                              it->second.final_detail}));
    }
  }
  while (ops_.size() > config_.max_tracked_ops) ops_.erase(ops_.begin());
}

CoordinatorState::OpRecord* CoordinatorState::open_op(PeerId peer, uint64_t epoch, uint64_t op_id, Out& out) {
  on_op_begin(peer, wire::C2M_OpBegin{epoch, op_id}, out);
  auto it = ops_.find(OpKey{epoch, op_id});
  if (it == ops_.end() || it->second.final_sent) return nullptr;  // answered by on_op_begin
  return &it->second;
}

void CoordinatorState::on_op_result(PeerId peer, const wire::C2M_OpResult& m, Out& out) {
  const OpKey key{m.epoch, m.op_id};
  OpRecord* found = open_op(peer, m.epoch, m.op_id, out);
  if (found == nullptr) return;
  OpRecord& op = *found;
  if (!m.ok) {
    finish_op(key, op, false, "peer " + std::to_string(peer) + " failed: " + m.detail, out);
    return;
  }
  op.reported_ok.insert(peer);
  const bool all_ok = std::all_of(view_.members.begin(), view_.members.end(),
                                  [&](const wire::ViewMember& v) { return op.reported_ok.count(v.peer_id) != 0; });
  if (all_ok) finish_op(key, op, true, "", out);
}

void CoordinatorState::on_sync_report(PeerId peer, const wire::C2M_SyncReport& m, Out& out) {
  const OpKey key{m.epoch, m.op_id};
  OpRecord* found = open_op(peer, m.epoch, m.op_id, out);
  if (found == nullptr) return;
  OpRecord& op = *found;
  op.is_sync = true;
  if (op.elected_sent) {  // a report sent again after a reconnect: the same answer
    const auto c = peers_.find(peer);
    if (c != peers_.end() && c->second.conn != kNoConn) {
      out.push_back(Action::send(c->second.conn, wire::M2C_SyncElected{op.epoch, m.op_id, op.elected}));
    }
    return;
  }
  net::PeerReport report = m.report;
  report.peer = peer;
  op.reports[peer] = std::move(report);
  try_elect(key, op, out);
}

// Elects once every member of the op's epoch (the current view: ops of older epochs are
// aborted when the view changes) reported.
void CoordinatorState::try_elect(const OpKey& key, OpRecord& op, Out& out) {
  if (op.elected_sent || op.final_sent || op.epoch != view_.epoch) return;
  std::vector<net::PeerReport> reports;
  for (const wire::ViewMember& v : view_.members) {
    auto r = op.reports.find(v.peer_id);
    if (r == op.reports.end()) return;
    reports.push_back(r->second);
    // A member this coordinator admitted as a joiner votes once a sync has given it the run's
    // state, whatever the peer says: a peer back after an eviction still believes it is a member.
    if (const auto p = peers_.find(v.peer_id); p != peers_.end() && p->second.unsynced) reports.back().votes = false;
  }
  const bool anyone_votes = std::any_of(reports.begin(), reports.end(), [](const net::PeerReport& r) { return r.votes; });
  if (!anyone_votes) {  // nobody has synced since admission: every non-empty state votes
    for (net::PeerReport& r : reports) r.votes = !r.buffers.empty();
  }
  net::ElectedHashes elected = net::elect(reports);
  if (elected.revision < run_revision_) {
    // Every holder of the run's state is away: wait for one to come back before going back.
    const std::string ago = "the run's newest state (revision " + std::to_string(run_revision_) +
                            ") is held by no member of this view (newest here: revision " + std::to_string(elected.revision) + ")";
    if (holder_wait_since_us_ < 0) {
      holder_wait_since_us_ = now_us_;
      LogEvent w;
      w.kind = "warning";
      w.epoch = op.epoch;
      w.revision = run_revision_;
      w.reason = ago + "; syncs wait up to " + std::to_string(config_.holder_wait_us / 1'000'000) +
                 " s for a holder to come back (a new run? it needs a new run log, --log)";
      out.push_back(Action::log("sync op " + std::to_string(key.second) + " of epoch " + std::to_string(op.epoch) + ": " + w.reason,
                                std::move(w)));
    }
    // Nobody here holds any state (fresh nodes only): going on would start the run over from
    // its initialisation under round numbers it already has. That is never a recovery: wait
    // for a holder, or a node resumed from a checkpoint, however long it takes.
    const bool nothing_held = elected.buffers.empty();
    if (nothing_held || now_us_ - holder_wait_since_us_ < config_.holder_wait_us) {
      finish_op(key, op, false,
                ago + (nothing_held ? "; no member holds any state: waiting for a holder, or a node started with --resume"
                                    : "; waiting for a holder to come back"),
                out);
      return;
    }
    LogEvent lost;
    lost.kind = "warning";
    lost.epoch = op.epoch;
    lost.revision = elected.revision;
    lost.reason = "the state of revision " + std::to_string(run_revision_) + " is lost with its holders (none came back in " +
                  std::to_string(config_.holder_wait_us / 1'000'000) + " s); the run goes on from revision " +
                  std::to_string(elected.revision);
    out.push_back(Action::log("LOST: " + lost.reason, std::move(lost)));
  }
  holder_wait_since_us_ = -1;
  run_revision_ = elected.revision;
  op.elected = std::move(elected);
  op.elected_sent = true;
  op.reports.clear();
  wire::M2C_SyncElected message{op.epoch, key.second, op.elected};
  const size_t bytes = wire::encode_message(message).size();
  if (bytes > wire::kMaxControlMessageBytes) {
    finish_op(key, op, false, "the elected hashes take " + std::to_string(bytes) + " bytes > " +
                                  std::to_string(wire::kMaxControlMessageBytes) + " (too many buffers or holder sets)", out);
    return;
  }
  if (!op.elected.forked.empty()) {
    // Two histories with the same progress: resolved by the election's rule, said loudly.
    std::string ids;
    for (PeerId p : op.elected.forked) ids += (ids.empty() ? "" : ",") + std::to_string(p);
    LogEvent f;
    f.kind = "fork";
    f.epoch = op.epoch;
    f.op_id = key.second;
    f.reason = "peers " + ids + " hold another state at revision " + std::to_string(op.elected.revision) +
               "; they take the elected one";
    out.push_back(Action::log("FORK in sync op " + std::to_string(key.second) + " of epoch " + std::to_string(op.epoch) +
                                  ": " + f.reason,
                              std::move(f)));
  }
  uint64_t missing = 0;
  for (const wire::ViewMember& v : view_.members) missing += op.elected.bytes_missing_on(v.peer_id);
  LogEvent e;
  e.kind = "sync";
  e.epoch = op.epoch;
  e.op_id = key.second;
  e.revision = op.elected.revision;
  out.push_back(Action::log("sync op " + std::to_string(key.second) + " of epoch " + std::to_string(op.epoch) + ": elected " +
                                std::to_string(op.elected.buffers.size()) + " buffers, revision " +
                                std::to_string(op.elected.revision) + ", " + std::to_string(missing) + " bytes to transfer",
                            std::move(e)));
  send_to_members(message, out);
}

// A re-registering peer tells the final status it received (from a previous incarnation): the
// members still waiting for that operation must get the same one.
void CoordinatorState::learn_final(uint64_t epoch, uint64_t op_id, bool ok, PeerId from, Out& out) {
  const OpKey key{epoch, op_id};
  auto it = ops_.find(key);
  if (it == ops_.end()) {
    OpRecord op;
    op.epoch = epoch;
    it = ops_.emplace(key, std::move(op)).first;
  }
  if (it->second.final_sent) {
    if (it->second.final_ok != ok) {
      LogEvent e;
      e.kind = "warning";
      e.peer = from;
      e.epoch = epoch;
      e.op_id = op_id;
      out.push_back(Action::log("op " + std::to_string(op_id) + " of epoch " + std::to_string(epoch) + ": peer " +
                                    std::to_string(from) + " was told a different final status before a restart",
                                std::move(e)));
    }
    return;
  }
  finish_op(key, it->second, ok, ok ? "" : "aborted before a coordinator restart", out);
}

void CoordinatorState::finish_op(const OpKey& key, OpRecord& op, bool ok, const std::string& detail, Out& out) {
  const uint64_t op_id = key.second;
  MERIDIAN_ASSERT(!op.final_sent, "op {}/{} finished twice", key.first, op_id);
  op.final_sent = true;
  op.final_ok = ok;
  op.final_detail = detail;
  op.reports.clear();
  if (op.is_sync) op.elected = {};
  if (op.is_sync && ok && op.epoch == view_.epoch) {
    for (const wire::ViewMember& m : view_.members) {
      if (auto p = peers_.find(m.peer_id); p != peers_.end()) p->second.unsynced = false;
    }
  }
  if (!ok) {
    LogEvent e;
    e.kind = "aborted";
    e.epoch = op.epoch;
    e.op_id = op_id;
    e.reason = detail;
    out.push_back(Action::log("op " + std::to_string(op_id) + " of epoch " + std::to_string(op.epoch) + " aborted: " + detail,
                              std::move(e)));
  }
  send_to_members(wire::M2C_OpFinal{op.epoch, op_id, ok, detail}, out);
}

void CoordinatorState::abort_ops_before(uint64_t epoch, const std::string& why, Out& out) {
  for (auto& [key, op] : ops_) {
    if (!op.final_sent && op.epoch < epoch) finish_op(key, op, false, why, out);
  }
}

void CoordinatorState::send_to_members(const wire::ControlMessage& message, Out& out) {
  for (const wire::ViewMember& m : view_.members) {
    auto it = peers_.find(m.peer_id);
    if (it != peers_.end() && it->second.conn != kNoConn) out.push_back(Action::send(it->second.conn, message));
  }
}

void CoordinatorState::tell_joiners(Out& out) {
  for (const auto& [id, p] : peers_) {
    if (p.phase == PeerPhase::kJoining && p.conn != kNoConn) out.push_back(Action::send(p.conn, wire::M2C_View{view_, false}));
  }
}

void CoordinatorState::update_phase() {
  bool any_member = false, any_waiting = false;
  for (const auto& [id, p] : peers_) {
    any_member |= p.phase == PeerPhase::kMember;
    any_waiting |= p.at_barrier;
  }
  phase_ = !any_member ? (any_waiting ? Phase::kBarrier : Phase::kEmpty) : (any_waiting ? Phase::kBarrier : Phase::kStable);
}

}  // namespace meridian::coord
