// The coordinator's state machine: membership views with an epoch, the join barrier, heartbeat
// eviction, graceful leave, and the one final status of every operation. Pure: events in,
// actions out, time passed in; no sockets, no clock, no threads (STYLE.md habit 4). The TCP
// daemon (coordinator_server.h) and the seeded simulation (tests/sim/coord_sim.cpp) drive the
// same code.
//
// The rules, in prose:
//   * A peer registers with C2M_Join and gets M2C_Welcome{peer_id}. A new peer is a joiner: it
//     is not in the view and waits to be admitted.
//   * Barrier: a peer calls update_topology (C2M_UpdateTopology). When every member of the
//     current view has called it (a barrier per epoch), the joiners that called it too are
//     admitted: if that changes the member set, the epoch increases by one (round 1), else the
//     round increases by one; every peer at the barrier gets M2C_View{barrier = true}. A member
//     may ask for a barrier without admissions (admit_joiners = false, a retry mid-round): if
//     any member at the barrier asks so, the joiners keep waiting for the next barrier. With no members (the start of a run), joiners at
//     the barrier are admitted as soon as they are at least the largest min_members asked for.
//   * Eviction: a peer not heard from (any message counts) for heartbeat_timeout is removed at
//     the next Tick; a peer whose connection closes, or that sends C2M_Leave, is removed at
//     once. Removing a member publishes a new view (epoch + 1) to the remaining members at once
//     (M2C_View{barrier = false}); it does not complete anybody's barrier by itself, but the
//     barrier is re-checked, since the one missing member may have been the removed one.
//   * Operations, named by (epoch, op_id): members announce C2M_OpBegin and report C2M_OpResult. Every
//     operation gets exactly one final status M2C_OpFinal, sent to the members of its epoch:
//     ok when all of them reported ok, aborted at the first failure report, or when the view
//     changes before it is complete (a member died, left or froze). A report for an operation
//     already final is answered with the same final status again, never a different one.
//   * Shared-state sync, an operation too: every member sends C2M_SyncReport (its per-buffer
//     digests; it implies C2M_OpBegin). Once every member of the epoch reported, the
//     coordinator runs net::elect() (shared_state.h) on the reports, keyed by peer id, and sends
//     every member M2C_SyncElected; the members transfer among themselves and report
//     C2M_OpResult, and the operation ends with one M2C_OpFinal like any other. A report sent
//     again (after a reconnect) is answered with the same elected hashes. Votes come from the
//     reports only (so that a restarted coordinator elects the same from the same reports): a
//     peer votes once a sync it took part in ended ok since it was admitted (the Communicator
//     keeps that flag), so a late joiner cannot vote away the state; if no report votes (the
//     start of a run, or every old member is gone), every non-empty state votes. The reports
//     are dropped once the operation is final.
//   * Progress never goes back: the coordinator keeps the revision of the last elected state
//     (the run's progress; across restarts through the run log). A sync whose newest reported
//     state is older (every holder of the run's state is away: frozen and evicted, restarting)
//     is aborted, and the members meet again, for up to holder_wait; a holder back in that time
//     re-registers as a joiner, is admitted at the next barrier and its newer state wins
//     (shared_state.h). After holder_wait the state is lost with its holders: a warning says so
//     and the newest state left is elected, if any member holds one: a view of fresh nodes
//     only never starts the run over (it waits for a holder or a resumed node, unbounded).
//   * Soft state: after a restart the coordinator knows nothing. A peer re-registers with its
//     previous id and the view it holds; the first such peer re-creates that view (same epoch,
//     all its members, the absent ones as not yet reconnected), the others re-attach to it.
//     Members that never come back are evicted by the heartbeat rule, so the run goes on. Until
//     a member re-attaches (for at most one heartbeat timeout), a restarted coordinator of a run
//     with progress admits no joiner: one admitted first would turn the returning members into
//     joiners, mid-round beside a node at its round start. A
//     re-registering peer also tells the last final status it received, so that members that
//     missed it (the old coordinator died while sending it) get the same one.
//
// Invariants (checked by the simulation): one member list per epoch (across restarts too, see
// kEpochSequenceBits), epochs only increase,
// every operation gets at most one final status value, a joiner is admitted only at a barrier.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "net/membership/wire.h"

namespace meridian::coord {

using net::PeerId;
using net::kNoPeer;
namespace wire = net::membership;

// The daemon's handle for one authenticated connection; never 0.
using ConnId = uint64_t;
inline constexpr ConnId kNoConn = 0;

// Epochs published by a coordinator incarnation start at incarnation << kEpochSequenceBits, so
// that a restarted coordinator never re-uses an epoch its predecessor may have published
// without any peer telling it (a view sent just before the crash). Re-created views keep
// their epoch: they are the predecessor's views, as the peers hold them.
inline constexpr int kEpochSequenceBits = 20;

struct CoordinatorConfig {
  uint64_t incarnation = 0;                   // daemon: wall-clock ms at start (increases across restarts)
  int64_t heartbeat_timeout_us = 5'000'000;
  int64_t heartbeat_interval_us = 1'000'000;  // told to peers; must be well below the timeout
  size_t max_tracked_ops = 4096;              // finals remembered for late reports
  // The run's progress so far: the revision of the last state a shared-state sync elected (a
  // restarted daemon reads it from its run log, see coordinator_server.h). A sync whose members
  // all hold older states (the holders of the run's state are frozen, partitioned or restarting)
  // is refused for up to holder_wait_us, so that a holder can come back first; after that the
  // state is given up as lost with its holders, said loudly, and the run goes on from the
  // newest state left.
  uint64_t known_revision = 0;
  int64_t holder_wait_us = 60'000'000;
};

// The coordinator as a whole.
enum class Phase : uint8_t {
  kEmpty,    // no members (a fresh start, a restart nobody re-registered with yet, or all gone)
  kStable,   // a view is published; nobody waits at the barrier
  kBarrier,  // at least one peer called update_topology and waits for the others
};
const char* phase_name(Phase phase);

// One registered peer.
enum class PeerPhase : uint8_t {
  kJoining,  // registered, not in the view: waits to be admitted at a barrier
  kMember,   // in the current view
};

// Events: what the daemon saw.
struct EvMessage {
  ConnId conn = kNoConn;
  wire::ControlMessage message;
};
struct EvDisconnected {
  ConnId conn = kNoConn;
  std::string reason;
};
struct EvTick {};
using Event = std::variant<EvMessage, EvDisconnected, EvTick>;

// What a log line is about, for the daemon's run log (coordinator_server.h writes it as one
// JSON object per line). Only the fields the event has are set. Kinds: registered, reattached,
// waiting (a joiner at the barrier), admitted, round (every completed barrier), view (a view
// published after a removal), left, evicted (heartbeat timeout), closed (connection lost),
// recreated (a view re-created after a restart), aborted, sync, warning, note (the rest).
struct LogEvent {
  std::string kind = "note";
  std::optional<PeerId> peer;
  std::string address;
  std::optional<uint64_t> epoch;
  std::optional<uint64_t> round;
  std::optional<uint64_t> op_id;
  std::optional<size_t> size;                   // members in the view
  std::optional<std::vector<PeerId>> members;   // the view's members in rank order
  std::optional<uint64_t> revision;             // sync: the elected state's revision
  std::vector<PeerId> admitted;                 // admitted at this barrier
  std::string reason;
};

// Actions: what the daemon must do, in order. (A tagged struct rather than a variant: GCC 12
// warns falsely about variants of variants of strings.)
struct Action {
  enum class Kind : uint8_t {
    kSend,   // send `message` on `conn`
    kClose,  // close `conn` (after what is queued for it); `text` says why
    kLog,    // print `text`; `event` says what it is about
  };
  Kind kind = Kind::kLog;
  ConnId conn = kNoConn;
  wire::ControlMessage message;
  std::string text;
  LogEvent event;  // kLog only

  static Action send(ConnId conn, wire::ControlMessage message);
  static Action close(ConnId conn, std::string why);
  static Action log(std::string line, LogEvent event = {});
};

class CoordinatorState {
 public:
  explicit CoordinatorState(const CoordinatorConfig& config);

  // The transition function. now_us: the daemon's monotonic clock.
  std::vector<Action> handle(const Event& event, int64_t now_us);

  // When the next Tick may evict someone (INT64_MAX if nobody is registered).
  int64_t next_deadline_us() const;

  Phase phase() const { return phase_; }
  const wire::View& view() const { return view_; }
  size_t joiner_count() const;
  bool is_registered(PeerId peer) const { return peers_.count(peer) != 0; }
  // The final status of an operation, if decided: true = ok.
  std::optional<bool> final_of(uint64_t epoch, uint64_t op_id) const;

 private:
  struct PeerRecord {
    PeerId id = kNoPeer;
    std::string address;
    std::vector<std::string> rank_addresses;  // its local ranks' ring addresses (wire::ViewMember)
    PeerPhase phase = PeerPhase::kJoining;
    ConnId conn = kNoConn;  // kNoConn: restored from a re-registration, not reconnected yet
    int64_t last_heard_us = 0;
    bool at_barrier = false;
    uint32_t min_members = 0;
    bool admit_joiners = true;   // as asked at this barrier (members only)
    // Admitted by this coordinator as a joiner (fresh, or back after an eviction) and no
    // shared-state sync has ended ok since: its report does not vote (its state may be behind).
    bool unsynced = false;
  };
  struct OpRecord {
    uint64_t epoch = 0;
    std::set<PeerId> reported_ok;
    bool final_sent = false;
    bool final_ok = false;
    std::string final_detail;
    // Shared-state sync only (is_sync): the reports so far, then the election's outcome.
    bool is_sync = false;
    std::map<PeerId, net::PeerReport> reports;
    bool elected_sent = false;
    net::ElectedHashes elected;
  };
  using Out = std::vector<Action>;

  void on_message(ConnId conn, const wire::ControlMessage& message, int64_t now_us, Out& out);
  void on_join(ConnId conn, const wire::C2M_Join& join, int64_t now_us, Out& out);
  void on_op_begin(PeerId peer, const wire::C2M_OpBegin& m, Out& out);
  void on_op_result(PeerId peer, const wire::C2M_OpResult& m, Out& out);
  void on_sync_report(PeerId peer, const wire::C2M_SyncReport& m, Out& out);
  // A result or a report implies a begin: on_op_begin, then the op's record, or nullptr when
  // it is already answered (final sent, or unknown to on_op_begin).
  OpRecord* open_op(PeerId peer, uint64_t epoch, uint64_t op_id, Out& out);
  // kind: the log event, "left", "evicted" or "closed".
  void remove_peer(PeerId peer, const char* kind, const std::string& why, Out& out);
  LogEvent view_event(const char* kind) const;  // kind with the current view's fields
  void publish_view(std::vector<wire::ViewMember> members, const std::string& why, Out& out);
  void try_complete_barrier(Out& out);
  using OpKey = std::pair<uint64_t, uint64_t>;  // (epoch, op_id)
  void finish_op(const OpKey& key, OpRecord& op, bool ok, const std::string& detail, Out& out);
  void try_elect(const OpKey& key, OpRecord& op, Out& out);
  uint64_t next_epoch();
  void learn_final(uint64_t epoch, uint64_t op_id, bool ok, PeerId from, Out& out);
  void abort_ops_before(uint64_t epoch, const std::string& why, Out& out);
  void send_to_members(const wire::ControlMessage& message, Out& out);
  // Registered joiners learn the run's view (not a barrier answer): a joiner of a running run
  // waits for its round start however long that takes, one of a new run does not.
  void tell_joiners(Out& out);
  void update_phase();
  void check_consistency() const;
  PeerRecord* peer_on(ConnId conn);

  CoordinatorConfig config_;
  Phase phase_ = Phase::kEmpty;
  wire::View view_;                       // the current view (epoch 0: none yet)
  bool restored_ = false;                 // view_ was re-created from a re-registration
  std::map<PeerId, PeerRecord> peers_;    // members and joiners
  std::map<ConnId, PeerId> peer_of_conn_;
  PeerId next_peer_id_ = 0;
  bool published_ = false;                // this incarnation has published a view
  std::map<OpKey, OpRecord> ops_;         // the oldest finals are forgotten first
  int64_t now_us_ = 0;                    // of the event being handled
  int64_t first_event_us_ = -1;           // this incarnation's first event (its start)
  bool in_restart_grace() const;          // see coordinator_state.cpp
  uint64_t run_revision_ = 0;             // the run's progress: see CoordinatorConfig::known_revision
  int64_t holder_wait_since_us_ = -1;     // syncs refused since then for want of a holder; -1: none
};

}  // namespace meridian::coord
