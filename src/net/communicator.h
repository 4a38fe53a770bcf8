// The API a trainer drives: join a run, agree on membership views, all-reduce fp32 buffers
// among the current view's members, leave. Torch-free: buffers are (pointer, count).
//
//   auto comm = Communicator::connect(options);        // authenticate, register, get a peer id
//   comm->update_topology();                            // barrier: adopt the next view, build the mesh
//   NetStatus st = comm->all_reduce(buf, n, Codec::kInt8, ReduceOp::kMean, &stats);
//   if (!st.is_ok()) { comm->update_topology(); retry; }  // buffer is as before the call
//   SyncOpStats ss; comm->sync_shared_state(state, &ss);  // everybody ends with the elected state
//   comm->leave();
//
// How an operation ends (the coordinator's "one final status per operation"): every member
// runs the all-reduce (collective/all_reduce.h) in place on the caller's buffer over the
// view's authenticated mesh (membership/mesh_transport.h), then reports its local outcome to
// the coordinator (C2M_OpResult) and waits for the operation's final status (M2C_OpFinal). The
// result stays only when the final status is ok, i.e. when every member holds the same result:
// if one member fails after another has its result, the latter puts its old values back
// (AllReduceRunner::restore_input), so nobody commits and the members never diverge. Cost: one
// round trip to the coordinator per operation; the all-reduce saves the values it replaces as
// it goes (a copy overlapped with the transfer, into scratch the runner keeps).
//
// Shared-state sync (sync_shared_state): an operation like an all-reduce, in three steps.
//   1. Report: every member sends the per-buffer XXH3-128 digests of its state
//      (C2M_SyncReport, SharedState::report) and waits for the election.
//   2. Elect: once every member of the epoch reported, the coordinator runs net::elect()
//      (shared_state.h) and sends every member the elected hashes (M2C_SyncElected); holders
//      are coordinator peer ids, which each member maps to ranks in its view.
//   3. Transfer: every member runs StateSyncRunner::run (state_sync/state_sync.h) over the
//      view's mesh with sync_id = op_id: members that lack a buffer pull it, striped over its
//      holders and the mesh's streams, verify its hash and commit; then every member reports
//      C2M_OpResult and waits for the operation's one final status.
// A fresh joiner does not vote: a peer's report votes only once a sync ended ok since it was
// admitted into the view (votes_; kept here, so a restarted coordinator elects the same). The
// caller's state is written only by StateSync's commit, after every downloaded buffer's hash
// matched: on any error the state is either as before the call or exactly the elected state
// (a member whose own transfer completed before another member failed), never a mix; the
// next sync, after update_topology, finds the rest. Cost: one round trip to the coordinator
// for the report, one for the final status, plus state_sync.h's transfer.
//
// Failure: a member that dies closes its mesh connections (the others fail at once with
// kPeerLost); a member that freezes stops heartbeating, the coordinator removes it after
// heartbeat_timeout and publishes a new view, which interrupts the others' operation. Either
// way the survivors' all_reduce returns an error within about the heartbeat timeout, their
// buffers untouched; update_topology then adopts the new view and a retry succeeds.
//
// The coordinator is soft state: when the control connection breaks, a background thread
// reconnects (bounded by reconnect_timeout_ms) and re-registers with this peer's id and view,
// and re-sends what was pending (a barrier request, an operation's report); operations on the
// mesh go on meanwhile.
//
// Threads: the caller's thread drives update_topology/all_reduce/leave (one at a time); one
// control thread owns the coordinator socket's reads and the heartbeats. mutex_ guards the
// state both touch (marked below).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/status.h"
#include "net/collective/all_reduce.h"
#include "net/membership/mesh_transport.h"
#include "net/membership/wire.h"
#include "net/state_sync/state_sync.h"

namespace meridian::net {

struct CommunicatorOptions {
  std::string coordinator_address;          // "host:port"
  std::string token;                        // the run token (see membership::read_token_file)
  std::string listen_address = "127.0.0.1:0";  // mesh port; 0: the OS picks
  size_t streams_per_peer = 2;
  size_t chunk_values = 0;                  // values per all-reduce piece; 0: ~64 KiB on the wire (piece_values_for)
  int64_t connect_timeout_ms = 10000;       // first registration
  int64_t topology_timeout_ms = 60000;      // one update_topology (barrier + mesh)
  int64_t op_timeout_ms = 60000;            // one all_reduce, final status included
  int64_t reconnect_timeout_ms = 60000;     // the coordinator may be away this long
  uint16_t protocol_version = membership::kProtocolVersion;  // tests only: speak another version
  // A node of G > 1 local ranks: the ring addresses of ranks 1..G-1 (membership::ViewMember).
  std::vector<std::string> rank_addresses;
};

// The other rings of an all-reduce whose data are cut among a node's local ranks: local rank r
// of every node reduces shard r on a mesh of its own (train/local_ranks.cpp), this
// communicator's mesh carrying rank 0's. The operation has one final status for all rings of
// all nodes: it commits only when every ring of every member succeeded.
class OtherRings {
 public:
  virtual ~OtherRings() = default;
  // Before this mesh's part: the other rings start the operation named by view.epoch and
  // options.op_id among the view's members (this node is member `self`).
  virtual void start(const membership::View& view, size_t self, const AllReduceOptions& options) = 0;
  // After it (`ours`: its local outcome): the other rings' combined local outcome. When ours
  // failed, or once stale() (the view changed) is true, the rings are interrupted.
  virtual NetStatus finish(const NetStatus& ours, const std::function<bool()>& stale) = 0;
  // The final status: the rings keep their results (true) or put their buffers back.
  virtual void end(bool commit) = 0;
};

// Statistics of one all_reduce.
struct OpStats {
  uint64_t op_id = 0;
  uint64_t epoch = 0;
  uint64_t bytes_sent = 0;   // mesh frames, headers included
  uint64_t bytes_recv = 0;
  double seconds = 0.0;      // the whole call, final status included
  double gbit_per_s() const { return seconds > 0 ? bytes_sent * 8.0 / seconds / 1e9 : 0.0; }
};

// Statistics of one sync_shared_state.
struct SyncOpStats {
  uint64_t op_id = 0;
  uint64_t epoch = 0;
  uint64_t bytes_downloaded = 0;    // verified-or-not payload pulled into staging
  uint64_t bytes_served = 0;        // payload sent to downloaders
  uint64_t bytes_sent = 0;          // mesh frames, headers included
  uint64_t bytes_recv = 0;
  uint64_t buffers_downloaded = 0;  // verified and committed
  uint64_t bytes_elected = 0;       // size of the elected state
  double transfer_seconds = 0.0;    // the transfer (StateSync) alone
  double seconds = 0.0;             // the whole call: report, election, transfer, final status
  // Download throughput of the transfer, payload only (0 when nothing was downloaded).
  double gbit_per_s() const { return transfer_seconds > 0 ? bytes_downloaded * 8.0 / transfer_seconds / 1e9 : 0.0; }
};

// An all_reduce that runs on a thread of its own (Communicator::start_all_reduce), with the
// same guarantees as the blocking call: one final status for all members, the buffer as before
// on error. Until finish() returns, the caller leaves the buffer alone and calls no other
// method of the Communicator.
class PendingAllReduce {
 public:
  PendingAllReduce() = default;
  explicit PendingAllReduce(std::future<std::pair<NetStatus, OpStats>> result) : result_(std::move(result)) {}
  bool valid() const { return result_.valid(); }
  bool done() const { return result_.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }
  // Waits for the operation's end (once).
  NetStatus finish(OpStats* stats = nullptr);

 private:
  std::future<std::pair<NetStatus, OpStats>> result_;
};

class Communicator {
 public:
  static Result<std::unique_ptr<Communicator>> connect(const CommunicatorOptions& options);
  ~Communicator();  // leaves if leave() was not called
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  // Barrier with the other members: returns once the coordinator published the next view
  // (joiners admitted) and the mesh for it is built. min_members: wait until the view would
  // hold at least that many peers (start of a run of known size). admit_joiners = false: the
  // view keeps its members (minus the lost ones) and joiners wait for a later barrier.
  // A peer that is not a member of a running run (a joiner) waits for the run's next round
  // start as long as the coordinator reports the run alive, past topology_timeout_ms (saying
  // so on stderr at every period); a peer of a new run, waiting for min_members, gives up
  // after topology_timeout_ms.
  Status update_topology(size_t min_members = 0, bool admit_joiners = true);
  // After an update_topology without admissions: how many joiners were waiting at that barrier
  // (the same number on every member; see M2C_View::joiners_waiting).
  size_t joiners_waiting() const { return joiners_waiting_; }
  // Whether the last update_topology admitted this peer: it was not a member of the run's view
  // the coordinator had told it (a fresh joiner, or a peer evicted meanwhile).
  bool admitted_at_last_barrier() const { return admitted_; }

  // Sum or mean of `count` floats across the view's members. On error the buffer is unchanged.
  NetStatus all_reduce(float* buffer, size_t count, Codec codec, ReduceOp op, OpStats* stats = nullptr);
  // The same with the node's other rings (see OtherRings): `buffer` is rank 0's shard.
  NetStatus all_reduce(float* buffer, size_t count, Codec codec, ReduceOp op, OtherRings* others, OpStats* stats);
  // all_reduce in the background; see PendingAllReduce.
  PendingAllReduce start_all_reduce(float* buffer, size_t count, Codec codec, ReduceOp op);
  // A newer view than `epoch` was published (or the coordinator is gone): any thread.
  bool view_changed_since(uint64_t epoch) const;

  // Collective over the view's members: afterwards every member holds the elected version of
  // the shared state (see the file comment). On error the state is unchanged or exactly the
  // elected one; call update_topology and sync again.
  NetStatus sync_shared_state(SharedState& state, SyncOpStats* stats = nullptr);

  Status leave();

  PeerId peer_id() const;
  const membership::View& view() const { return view_; }  // the adopted view (caller's thread)
  size_t rank() const { return rank_; }
  const std::string& listen_address() const { return listen_address_; }

 private:
  explicit Communicator(const CommunicatorOptions& options);
  // One barrier and the mesh of its view; *view_moved: a newer view came while the mesh was
  // built (update_topology meets again).
  Status barrier_and_mesh(size_t min_members, bool admit_joiners, bool* view_moved);
  void control_loop();                       // the control thread
  Status register_once(int64_t deadline_us, bool* refused);  // control thread
  void on_control_message(const membership::ControlMessage& m);  // control thread, mutex_ held
  void send_control(const membership::ControlMessage& m);        // any thread
  void wake_control();
  // Starts an operation (epoch, op_id) on the mesh; fails if the view is stale or we are lost.
  NetStatus begin_op(uint64_t epoch, uint64_t op_id, membership::MeshTransport** mesh);
  // Reports the local outcome and waits for the final status (ok: the final was ok).
  NetStatus finish_op(uint64_t epoch, uint64_t op_id, const NetStatus& local, int64_t deadline_us);

  CommunicatorOptions options_;
  int listen_fd_ = -1;
  std::string listen_address_;
  int wake_fds_[2] = {-1, -1};
  std::thread control_thread_;
  std::atomic<bool> stop_{false};

  // Caller's thread only:
  membership::View view_;                    // adopted at the last update_topology
  size_t rank_ = 0;
  uint64_t op_seq_ = 0;                      // operations started since the last barrier
  bool votes_ = false;                       // an ok sync since this peer was admitted
  size_t joiners_waiting_ = 0;               // told by the last barrier
  bool admitted_ = false;                    // ... and whether it admitted this peer
  std::unique_ptr<AllReduceRunner> runner_;  // per mesh
  std::unique_ptr<StateSyncRunner> sync_runner_;  // per mesh
  bool left_ = false;

  std::mutex send_mutex_;                    // serialises writes to coord_fd_
  int coord_fd_ = -1;                        // written under send_mutex_ (and mutex_ to replace)

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  // Guarded by mutex_:
  PeerId peer_id_ = kNoPeer;
  bool registered_ = false;                  // welcome received on the current connection
  Status fatal_;                             // the coordinator refused us, or stayed away too long
  std::optional<membership::View> barrier_view_;   // answer to the pending update_topology
  uint32_t barrier_joiners_waiting_ = 0;           // ... and its joiners_waiting
  bool barrier_admitted_ = false;                  // ... and whether this peer was a joiner before it
  std::optional<membership::C2M_UpdateTopology> pending_update_;
  membership::View held_view_;               // what we tell a (restarted) coordinator we hold
  membership::View run_view_;                // the run's view as last told, this peer in it or not
  uint64_t newest_epoch_ = 0;                // newest epoch the coordinator told us about
  std::unique_ptr<membership::MeshTransport> mesh_;  // replaced by the caller's thread only
  uint64_t running_op_ = 0;                  // op in progress (0: none)
  uint64_t running_epoch_ = 0;
  std::optional<membership::C2M_OpBegin> pending_begin_;
  std::optional<membership::C2M_OpResult> pending_result_;
  std::optional<membership::C2M_SyncReport> pending_report_;   // re-sent until the final status
  std::optional<membership::M2C_SyncElected> elected_;         // for the running sync
  bool elected_taken_ = false;                                 // the running sync has its election
  std::map<std::pair<uint64_t, uint64_t>, membership::M2C_OpFinal> finals_;  // recent, by (epoch, op_id)
};

}  // namespace meridian::net
