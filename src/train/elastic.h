// DiLoCo across nodes: the RoundSync that meets the other nodes of a run through the
// coordinator and the mesh (net/communicator.h). One node per process; `meridian train
// --coordinator HOST:PORT --token-file F` drives it.
//
// A round, seen from one node (DESIGN.md section 2):
//   begin_round: meet()
//     update_topology          barrier with the other members; joiners are admitted here only
//     sync "run state"         outer theta, outer momentum, counters (step, tokens, rounds), data
//                              cursor, model shape hash, with revision = rounds: the newest
//                              round wins, then the majority (shared_state.h), so a joiner (or a
//                              stale node) downloads it and every member's hash is checked
//     sync "inner state"       only when the view changed since the last one: a member's AdamW
//                              moments and step for the joiners (see below)
//     data shard = (rank, world) of the view; model <- theta
//   H inner steps (Trainer)
//   all_reduce_mean: pseudo-gradient, the configured codec, mean over the view's members. On
//     failure (a member died or froze) the buffer is unchanged: meet the survivors again
//     without admitting joiners (a joiner has no pseudo-gradient for this round) and retry.
//     A node that was evicted meanwhile (frozen past the heartbeat timeout) is admitted again
//     as a joiner at the others' next round start and takes their newer state there: its
//     pseudo-gradient is void, so it returns RoundStats::restarted and begins that round.
//
// Who holds what. Fresh nodes (no --resume) hold nothing until their first sync: they offer an
// empty state, which does not vote, so a run that is going on, or one node resumed from a
// checkpoint, is never out-voted by fresh initialisations; when every node is fresh, nothing is
// elected and each keeps its seeded initialisation (identical on every node, checked by the
// next round's sync). The inner AdamW state differs per node, so it cannot be elected by
// majority: members that hold one offer it, every version has one vote, and the election's tie
// rule picks the lowest peer id's; joiners take it, the members keep their own and download
// nothing (SharedState::set_pulls(false): they only serve). Every member decides "the
// view changed since my last inner-state sync" alike, since every operation has one final
// status for all members.
//
// Data policy (data/loader.h, data/mixture.h): the cursor is part of the run state, the same
// on every member at a round start; rank r of W reads every W-th sequence from it, so no
// sequence is read by two nodes in a round, and all members end the round at the same cursor.
// The sequences of a node that dies mid-round are skipped, not re-read.
#pragma once

#include <atomic>
#include <cstdio>
#include <future>
#include <memory>
#include <optional>

#include "core/status.h"
#include "net/communicator.h"
#include "train/diloco.h"

namespace meridian::train {

struct ElasticOptions {
  net::CommunicatorOptions comm;
  net::Codec codec = net::Codec::kInt8;
  size_t min_nodes = 1;     // the first round waits for this many nodes
  bool has_state = false;   // resumed from a checkpoint: this node's state may seed the run
  std::FILE* out = stdout;  // a line per membership change; nullptr: silent
};

class ElasticRounds final : public RoundSync {
 public:
  // Registers with the coordinator (authenticated); errors name the cause (unreachable, wrong
  // token, other protocol version).
  static Result<std::unique_ptr<ElasticRounds>> connect(ElasticOptions options);

  Status begin_round(Trainer& trainer, RoundStats* stats) override;
  Status begin_round(Trainer& trainer, RoundStats* stats, bool admit_joiners, size_t* joiners_waiting) override;
  // In the background (diloco.overlap): all_reduce_mean on a thread of its own. Its retries
  // meet the survivors there; in their inner-state sync this node offers and takes nothing (the
  // trainer's thread owns its moments). A run state it receives (this node was behind: evicted
  // while frozen, admitted again at the others' round start) is parked and taken into the
  // trainer at finish, on the caller's thread, which behind_the_run() tells between two steps.
  void start_all_reduce_mean(float* data, size_t count) override;
  Status finish_all_reduce_mean(RoundStats* stats) override;
  bool behind_the_run() const override { return behind_.load(); }
  Status all_reduce_mean(float* data, size_t count, RoundStats* stats) override { return all_reduce_mean(data, count, stats, nullptr); }
  Status all_reduce_mean(float* data, size_t count, RoundStats* stats, net::OtherRings* others) override;
  int world_size() const override;
  bool rings_per_local_rank(int local_world) const override;

  Status leave();
  net::PeerId peer_id() const { return comm_->peer_id(); }

 private:
  explicit ElasticRounds(ElasticOptions options)
      : options_(std::move(options)), has_state_(options_.has_state), needs_inner_(!options_.has_state) {}
  // Barrier, then the syncs, until all succeed; errors only when the run cannot go on.
  Status meet(Trainer& trainer, bool admit_joiners, RoundStats* stats);
  net::NetStatus sync_run_state(Trainer& trainer, RoundStats* stats);
  // Takes a run state downloaded by sync_run_state into the trainer (caller's thread).
  Status take_run_state(Trainer& trainer, const net::SharedState& state, const net::SyncOpStats& ss, int64_t rounds_before);
  net::NetStatus sync_inner_state(Trainer& trainer, RoundStats* stats);
  void log_view_change();

  ElasticOptions options_;
  std::unique_ptr<net::Communicator> comm_;
  Trainer* trainer_ = nullptr;   // set at the first begin_round
  bool has_state_;               // holds the run state (resumed, or synced once)
  bool needs_inner_;             // fresh: takes the inner state a member offers
  uint64_t inner_synced_epoch_ = 0;
  std::vector<net::PeerId> members_;  // of the last adopted view (empty: before the first barrier)
  bool took_run_state_ = false;       // the last sync_run_state replaced this node's state
  Status fatal_;                 // the run's state does not fit this node
  // The background all-reduce (start/finish_all_reduce_mean).
  std::future<std::pair<Status, RoundStats>> pending_;
  bool background_ = false;      // set while the background thread drives comm_
  struct Parked {
    net::SharedState state;
    net::SyncOpStats ss;
    int64_t rounds_before = 0;
  };
  std::optional<Parked> parked_;  // a run state the background thread received
  std::atomic<bool> behind_{false};  // parked_ is set and the background thread is returning
};

}  // namespace meridian::train
