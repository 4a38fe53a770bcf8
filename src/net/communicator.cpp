#include "net/communicator.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "core/assert.h"
#include "core/fault.h"
#include "net/membership/socket_io.h"

namespace meridian::net {

namespace ms = membership;

namespace {

bool has_member(const ms::View& view, PeerId peer) {
  return std::any_of(view.members.begin(), view.members.end(), [&](const ms::ViewMember& m) { return m.peer_id == peer; });
}

constexpr int64_t kReconnectBackoffUs = 50'000;
constexpr size_t kMaxFinalsKept = 256;

std::chrono::steady_clock::time_point to_time_point(int64_t us) {
  return std::chrono::steady_clock::time_point(std::chrono::microseconds(us));
}

}  // namespace

Communicator::Communicator(const CommunicatorOptions& options) : options_(options) {}

Result<std::unique_ptr<Communicator>> Communicator::connect(const CommunicatorOptions& options) {
  if (options.token.empty()) return Status::error("communicator: empty run token", "pass the run's token file");
  std::unique_ptr<Communicator> c(new Communicator(options));
  Result<ms::Listener> l = ms::listen_tcp(options.listen_address);
  if (!l) return l.status();
  c->listen_fd_ = l->fd;
  c->listen_address_ = l->address;
  if (::pipe2(c->wake_fds_, O_CLOEXEC | O_NONBLOCK) != 0) return Status::error(std::string("pipe: ") + std::strerror(errno));
  c->control_thread_ = std::thread([p = c.get()] { p->control_loop(); });
  const int64_t deadline = ms::steady_now_us() + options.connect_timeout_ms * 1000;
  std::unique_lock<std::mutex> lock(c->mutex_);
  c->cv_.wait_until(lock, to_time_point(deadline), [&] { return c->registered_ || !c->fatal_.is_ok(); });
  if (!c->fatal_.is_ok()) return c->fatal_;
  if (!c->registered_) {
    return Status::error("cannot register with the coordinator at " + options.coordinator_address + " within " +
                             std::to_string(options.connect_timeout_ms) + " ms",
                         "check that `meridian coordinator` runs there and is reachable");
  }
  return c;
}

Communicator::~Communicator() {
  leave();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  for (int fd : wake_fds_) {
    if (fd >= 0) ::close(fd);
  }
}

PeerId Communicator::peer_id() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return peer_id_;
}

void Communicator::wake_control() {
  const char b = 1;
  [[maybe_unused]] const ssize_t n = ::write(wake_fds_[1], &b, 1);
}

void Communicator::send_control(const ms::ControlMessage& m) {
  const std::vector<std::byte> frame = ms::encode_frame(m);
  std::lock_guard<std::mutex> lock(send_mutex_);
  // A failed write is not reported here: the control thread notices the broken connection,
  // reconnects and re-sends what is pending.
  if (coord_fd_ >= 0) ms::write_all(coord_fd_, frame.data(), frame.size(), ms::steady_now_us() + 1'000'000);
}

// ---- control thread ------------------------------------------------------------------------

Status Communicator::register_once(int64_t deadline_us, bool* refused) {
  *refused = false;
  Result<int> fd = ms::connect_tcp(options_.coordinator_address, deadline_us);
  if (!fd) return fd.status();
  ms::Hello hello;
  hello.version = options_.protocol_version;
  hello.role = ms::Role::kPeerToCoordinator;
  Status st = ms::client_handshake(*fd, options_.token, hello, "coordinator at " + options_.coordinator_address,
                                   deadline_us, refused);
  if (!st.is_ok()) {
    ::close(*fd);
    return st;
  }
  ms::C2M_Join join;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    join.previous_peer_id = peer_id_;
    join.listen_address = listen_address_;
    join.rank_addresses = options_.rank_addresses;
    join.last_view = held_view_;
    if (!finals_.empty()) {
      const ms::M2C_OpFinal& f = finals_.rbegin()->second;
      join.last_final_epoch = f.epoch;
      join.last_final_op_id = f.op_id;
      join.last_final_ok = f.ok;
    }
  }
  const std::vector<std::byte> frame = ms::encode_frame(join);
  if (!ms::write_all(*fd, frame.data(), frame.size(), deadline_us)) {
    ::close(*fd);
    return Status::error("coordinator at " + options_.coordinator_address + ": cannot send C2M_Join");
  }
  std::lock_guard<std::mutex> send_lock(send_mutex_);
  coord_fd_ = *fd;
  return Status::ok();
}

void Communicator::control_loop() {
  ms::FrameReader reader;
  int64_t away_since_us = ms::steady_now_us();
  int64_t next_heartbeat_us = 0;
  int64_t heartbeat_interval_us = 1'000'000;
  Status last_error;
  bool was_registered = false;
  while (!stop_) {
    const int64_t now = ms::steady_now_us();
    if (coord_fd_ < 0) {
      bool refused = false;
      const Status st = register_once(now + options_.connect_timeout_ms * 1000, &refused);
      if (!st.is_ok()) {
        last_error = st;
        const bool too_long = ms::steady_now_us() - away_since_us > options_.reconnect_timeout_ms * 1000;
        if (refused || too_long) {
          std::lock_guard<std::mutex> lock(mutex_);
          fatal_ = refused ? st
                           : Status::error("the coordinator at " + options_.coordinator_address + " was unreachable for " +
                                               std::to_string(options_.reconnect_timeout_ms) + " ms: " + st.message(),
                                           "restart the coordinator on the same address; the peers re-register");
          if (mesh_ && running_op_ != 0) mesh_->interrupt(fatal_.message());
          cv_.notify_all();
          return;
        }
        pollfd pfd{wake_fds_[0], POLLIN, 0};
        ::poll(&pfd, 1, static_cast<int>(kReconnectBackoffUs / 1000));  // back off; a stop wakes us
        continue;
      }
      reader = ms::FrameReader();
      next_heartbeat_us = 0;
    }
    if (now >= next_heartbeat_us) {
      send_control(ms::C2M_Heartbeat{});
      next_heartbeat_us = now + heartbeat_interval_us;
    }
    pollfd fds[2] = {{wake_fds_[0], POLLIN, 0}, {coord_fd_, POLLIN, 0}};
    const int timeout_ms = static_cast<int>(std::max<int64_t>(0, (next_heartbeat_us - now + 999) / 1000));
    if (::poll(fds, 2, timeout_ms) < 0) continue;
    if (fds[0].revents & POLLIN) {
      char drain[64];
      while (::read(wake_fds_[0], drain, sizeof(drain)) > 0) {
      }
    }
    if (!(fds[1].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    for (;;) {
      std::vector<std::byte> payload;
      const ms::ReadResult r = ms::read_frame(coord_fd_, reader, &payload, 0);
      if (r.code == ms::ReadCode::kTimeout) break;
      Result<ms::ControlMessage> m = r.code == ms::ReadCode::kOk ? ms::decode_message(payload)
                                                                 : Result<ms::ControlMessage>(Status::error(r.detail));
      if (!m) {
        {
          std::lock_guard<std::mutex> send_lock(send_mutex_);
          ::close(coord_fd_);
          coord_fd_ = -1;
        }
        std::lock_guard<std::mutex> lock(mutex_);
        registered_ = false;
        away_since_us = ms::steady_now_us();
        std::fprintf(stderr, "meridian: lost the coordinator at %s (%s); reconnecting\n",
                     options_.coordinator_address.c_str(), m.status().message().c_str());
        break;
      }
      if (const auto* w = std::get_if<ms::M2C_Welcome>(&*m)) {
        heartbeat_interval_us = std::max<int64_t>(1000, int64_t{w->heartbeat_interval_ms} * 1000);
        if (was_registered) {
          std::fprintf(stderr, "meridian: re-registered with the coordinator as peer %u after %lld ms\n", w->peer_id,
                       static_cast<long long>((ms::steady_now_us() - away_since_us) / 1000));
        }
        was_registered = true;
      }
      std::lock_guard<std::mutex> lock(mutex_);
      on_control_message(*m);
    }
  }
}

void Communicator::on_control_message(const ms::ControlMessage& m) {
  if (const auto* w = std::get_if<ms::M2C_Welcome>(&m)) {
    peer_id_ = w->peer_id;
    registered_ = true;
    run_view_ = ms::View{};  // this coordinator tells its own (a view follows when there is a run)
    // Re-send what the coordinator may have lost (it restarted, or the connection broke).
    if (pending_update_) send_control(*pending_update_);
    if (pending_begin_) send_control(*pending_begin_);
    if (pending_report_) send_control(*pending_report_);
    if (pending_result_) send_control(*pending_result_);
  } else if (const auto* v = std::get_if<ms::M2C_View>(&m)) {
    const bool was_member = has_member(run_view_, peer_id_);
    run_view_ = v->view;
    if (!has_member(v->view, peer_id_)) {
      cv_.notify_all();
      return;  // a joiner learning how the run stands: nothing to adopt
    }
    if (v->view.epoch >= held_view_.epoch) held_view_ = v->view;
    newest_epoch_ = std::max(newest_epoch_, v->view.epoch);
    if (v->barrier && pending_update_) {
      barrier_view_ = v->view;
      barrier_joiners_waiting_ = v->joiners_waiting;
      barrier_admitted_ = !was_member;
      pending_update_.reset();
    }
    if (running_op_ != 0 && v->view.epoch > running_epoch_ && mesh_) {
      mesh_->interrupt("view changed to epoch " + std::to_string(v->view.epoch) + " (" +
                       std::to_string(v->view.members.size()) + " members)");
    }
  } else if (const auto* e = std::get_if<ms::M2C_SyncElected>(&m)) {
    // Kept only for the sync that waits for it (a repeated answer after a reconnect is dropped
    // once the transfer started: pending_report_ is then still set, but elected_ was taken).
    if (pending_report_ && pending_report_->epoch == e->epoch && pending_report_->op_id == e->op_id &&
        running_op_ == e->op_id && !elected_taken_) {
      elected_ = *e;
    }
  } else if (const auto* f = std::get_if<ms::M2C_OpFinal>(&m)) {
    finals_[{f->epoch, f->op_id}] = *f;
    while (finals_.size() > kMaxFinalsKept) finals_.erase(finals_.begin());
    if (!f->ok && running_op_ == f->op_id && running_epoch_ == f->epoch && mesh_) {
      mesh_->interrupt("operation aborted: " + f->detail);
    }
    if (pending_begin_ && pending_begin_->op_id == f->op_id && pending_begin_->epoch == f->epoch) pending_begin_.reset();
    if (pending_result_ && pending_result_->op_id == f->op_id && pending_result_->epoch == f->epoch) pending_result_.reset();
  }
  cv_.notify_all();
}

// ---- the caller's API ------------------------------------------------------------------------

Status Communicator::update_topology(size_t min_members, bool admit_joiners) {
  for (;;) {
    bool view_moved = false;
    const Status st = barrier_and_mesh(min_members, admit_joiners, &view_moved);
    if (!view_moved) return st;
    // A member died or froze while the others built the mesh: the coordinator removed it and
    // published a newer view. Meet again (the next barrier adopts that view).
  }
}

Status Communicator::barrier_and_mesh(size_t min_members, bool admit_joiners, bool* view_moved) {
  if (left_) return Status::error("update_topology after leave()");
  const int64_t deadline = ms::steady_now_us() + options_.topology_timeout_ms * 1000;
  ms::C2M_UpdateTopology request{view_.epoch, static_cast<uint32_t>(min_members), admit_joiners};
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!fatal_.is_ok()) return fatal_;
    barrier_view_.reset();
    pending_update_ = request;
  }
  send_control(request);
  ms::View next;
  PeerId self = kNoPeer;
  int64_t mesh_deadline = deadline;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    const auto waiting = [&] { return !barrier_view_.has_value() && fatal_.is_ok(); };
    cv_.wait_until(lock, to_time_point(deadline), [&] { return !waiting(); });
    // A joiner of a running run waits for its round start however long the round takes; it
    // gives up only when the run is gone (no members) or the coordinator is (fatal_).
    for (int periods = 1; waiting() && !run_view_.members.empty() && !has_member(run_view_, peer_id_); ++periods) {
      std::fprintf(stderr,
                   "meridian: waiting to join the run (view epoch %llu, %zu members): its next round start has not "
                   "come in %lld s\n",
                   static_cast<unsigned long long>(run_view_.epoch), run_view_.members.size(),
                   static_cast<long long>(periods * options_.topology_timeout_ms / 1000));
      cv_.wait_until(lock, to_time_point(ms::steady_now_us() + options_.topology_timeout_ms * 1000),
                     [&] { return !waiting(); });
      // Admitted after the first period: the mesh gets a period of its own from now.
      mesh_deadline = ms::steady_now_us() + options_.topology_timeout_ms * 1000;
    }
    if (!fatal_.is_ok()) return fatal_;
    if (!barrier_view_) {
      pending_update_.reset();
      return Status::error("update_topology: no new view within " + std::to_string(options_.topology_timeout_ms) +
                           " ms (the other members did not all call update_topology)");
    }
    next = *barrier_view_;
    barrier_view_.reset();
    joiners_waiting_ = barrier_joiners_waiting_;
    admitted_ = barrier_admitted_;
    self = peer_id_;
  }
  const auto me = std::find_if(next.members.begin(), next.members.end(),
                               [&](const ms::ViewMember& m) { return m.peer_id == self; });
  if (me == next.members.end()) return Status::error("update_topology: this peer is not in view epoch " + std::to_string(next.epoch));
  const size_t rank = static_cast<size_t>(me - next.members.begin());
  if (!has_member(view_, self)) votes_ = false;  // admitted now: our state counts once a sync gave us the elected one
  if (next.epoch != view_.epoch || !runner_) {
    std::unique_ptr<ms::MeshTransport> old;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      old = std::move(mesh_);
    }
    runner_.reset();
    sync_runner_.reset();
    old.reset();  // closes the previous view's connections
    ms::MeshTransportOptions mesh_options;
    mesh_options.token = options_.token;
    mesh_options.epoch = next.epoch;
    mesh_options.streams_per_peer = options_.streams_per_peer;
    auto mesh = std::make_unique<ms::MeshTransport>(mesh_options, listen_fd_);
    std::vector<std::string> addresses;
    for (const ms::ViewMember& m : next.members) addresses.push_back(m.address);
    MERIDIAN_FAULT_POINT("communicator.mesh");  // the N-th mesh this peer builds (a new view)
    const Status st = mesh->connect_mesh(static_cast<PeerId>(rank), addresses, mesh_deadline,
                                         [this, epoch = next.epoch] { return view_changed_since(epoch); });
    view_ = next;
    rank_ = rank;
    if (!st.is_ok()) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!fatal_.is_ok()) return fatal_;
        *view_moved = newest_epoch_ > next.epoch;
      }
      return st.with_context("update_topology (view epoch " + std::to_string(next.epoch) + ")");
    }
    runner_ = std::make_unique<AllReduceRunner>(*mesh);
    sync_runner_ = std::make_unique<StateSyncRunner>(*mesh);
    std::lock_guard<std::mutex> lock(mutex_);
    mesh_ = std::move(mesh);
  }
  view_ = next;
  rank_ = rank;
  op_seq_ = 0;
  return Status::ok();
}

NetStatus Communicator::begin_op(uint64_t epoch, uint64_t op_id, ms::MeshTransport** mesh) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!fatal_.is_ok()) return NetStatus::error(NetCode::kClosed, kNoPeer, fatal_.message());
  if (newest_epoch_ > epoch) {
    return NetStatus::error(NetCode::kPeerLost, kNoPeer,
                            "the view changed to epoch " + std::to_string(newest_epoch_) + ": call update_topology");
  }
  *mesh = mesh_.get();
  (*mesh)->clear_interrupts();
  running_op_ = op_id;
  running_epoch_ = epoch;
  pending_begin_ = ms::C2M_OpBegin{epoch, op_id};
  pending_result_.reset();
  pending_report_.reset();
  elected_.reset();
  elected_taken_ = false;
  return NetStatus::ok();
}

NetStatus Communicator::finish_op(uint64_t epoch, uint64_t op_id, const NetStatus& local, int64_t deadline_us) {
  NetStatus st = local;
  ms::C2M_OpResult report{epoch, op_id, st.is_ok(), st.is_ok() ? "" : st.to_string()};
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_result_ = report;
  }
  send_control(report);
  if (st.is_ok()) {
    // Commit only on the final status: every member holds the result, or nobody commits.
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_until(lock, to_time_point(deadline_us), [&] { return finals_.count({epoch, op_id}) != 0 || !fatal_.is_ok(); });
    auto f = finals_.find({epoch, op_id});
    if (f == finals_.end()) {
      st = NetStatus::error(NetCode::kTimeout, kNoPeer,
                            fatal_.is_ok() ? "no final status from the coordinator for op " + std::to_string(op_id)
                                           : fatal_.message());
    } else if (!f->second.ok) {
      st = NetStatus::error(NetCode::kPeerLost, kNoPeer, "operation aborted: " + f->second.detail);
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  running_op_ = 0;
  pending_begin_.reset();
  pending_result_.reset();
  pending_report_.reset();
  elected_.reset();
  return st;
}

NetStatus Communicator::all_reduce(float* buffer, size_t count, Codec codec, ReduceOp op, OpStats* stats) {
  return all_reduce(buffer, count, codec, op, nullptr, stats);
}

NetStatus PendingAllReduce::finish(OpStats* stats) {
  MERIDIAN_ASSERT(result_.valid(), "PendingAllReduce::finish without an operation");
  auto [status, op] = result_.get();
  if (stats) *stats = op;
  return status;
}

PendingAllReduce Communicator::start_all_reduce(float* buffer, size_t count, Codec codec, ReduceOp op) {
  return PendingAllReduce(std::async(std::launch::async, [this, buffer, count, codec, op] {
    OpStats stats;
    NetStatus st = all_reduce(buffer, count, codec, op, &stats);
    return std::pair{st, stats};
  }));
}

bool Communicator::view_changed_since(uint64_t epoch) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return newest_epoch_ > epoch || !fatal_.is_ok();
}

NetStatus Communicator::all_reduce(float* buffer, size_t count, Codec codec, ReduceOp op, OtherRings* others, OpStats* stats) {
  const int64_t start_us = ms::steady_now_us();
  const int64_t deadline = start_us + options_.op_timeout_ms * 1000;
  if (!runner_) return NetStatus::error(NetCode::kClosed, kNoPeer, "all_reduce without a view: call update_topology first");
  const uint64_t epoch = view_.epoch;
  // With the epoch, names the operation: unique within the epoch's mesh, the same on every
  // member (the round comes from the barrier, the sequence number counts calls since it).
  const uint64_t op_id = (view_.round << 32) | ++op_seq_;
  ms::MeshTransport* mesh = nullptr;
  if (NetStatus st = begin_op(epoch, op_id, &mesh); !st.is_ok()) return st;
  send_control(ms::C2M_OpBegin{epoch, op_id});

  std::vector<PeerId> ranks(view_.members.size());
  for (size_t i = 0; i < ranks.size(); ++i) ranks[i] = static_cast<PeerId>(i);
  AllReduceOptions ar;
  ar.codec = codec;
  ar.op = op;
  ar.chunk_values = options_.chunk_values > 0 ? options_.chunk_values : piece_values_for(codec);
  ar.timeout_ms = options_.op_timeout_ms;
  ar.op_id = op_id;
  AllReduceStats ar_stats;
  // In place: a local failure leaves the buffer as it was; a local success that the coordinator
  // does not confirm (another member failed) is undone.
  if (others != nullptr) others->start(view_, rank_, ar);
  NetStatus local = runner_->run(ranks, std::span<float>(buffer, count), ar, &ar_stats);
  if (others != nullptr) {
    // The operation is ok for this node only if every ring is: their outcome joins ours.
    const NetStatus theirs = others->finish(local, [&] { return view_changed_since(epoch); });
    if (local.is_ok() && !theirs.is_ok()) {
      runner_->restore_input();
      local = theirs;
    }
  }
  const NetStatus st = finish_op(epoch, op_id, local, deadline);
  if (!st.is_ok() && local.is_ok()) runner_->restore_input();
  if (others != nullptr) others->end(st.is_ok());
  if (stats != nullptr) {
    stats->op_id = op_id;
    stats->epoch = epoch;
    stats->bytes_sent = ar_stats.bytes_sent_total;
    stats->bytes_recv = ar_stats.bytes_recv_total;
    stats->seconds = (ms::steady_now_us() - start_us) / 1e6;
  }
  return st;
}

NetStatus Communicator::sync_shared_state(SharedState& state, SyncOpStats* stats) {
  const int64_t start_us = ms::steady_now_us();
  const int64_t deadline = start_us + options_.op_timeout_ms * 1000;
  if (!sync_runner_) {
    return NetStatus::error(NetCode::kClosed, kNoPeer, "sync_shared_state without a view: call update_topology first");
  }
  const uint64_t epoch = view_.epoch;
  const uint64_t op_id = (view_.round << 32) | ++op_seq_;  // as all_reduce's: one numbering
  if (stats != nullptr) *stats = SyncOpStats{op_id, epoch};
  // 1. Report. A report that breaks the wire's bounds is a caller error, found before anybody waits.
  ms::C2M_SyncReport report{epoch, op_id, state.report(peer_id())};
  report.report.votes = report.report.votes && votes_;
  std::string why;
  if (!ms::sync_report_fits(report.report, &why)) {
    return NetStatus::error(NetCode::kMessageTooLarge, kNoPeer, "sync_shared_state: the state cannot be reported: " + why);
  }
  ms::MeshTransport* mesh = nullptr;
  if (NetStatus st = begin_op(epoch, op_id, &mesh); !st.is_ok()) return st;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_report_ = report;
  }
  send_control(report);

  // 2. Wait for the election (or an abort: a member failed, the view changed).
  std::optional<ms::M2C_SyncElected> elected;
  NetStatus local;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_until(lock, to_time_point(deadline), [&] {
      return elected_.has_value() || finals_.count({epoch, op_id}) != 0 || newest_epoch_ > epoch || !fatal_.is_ok();
    });
    if (elected_) {
      elected = std::move(elected_);
      elected_.reset();
      elected_taken_ = true;
    } else if (!fatal_.is_ok()) {
      local = NetStatus::error(NetCode::kClosed, kNoPeer, fatal_.message());
    } else if (auto f = finals_.find({epoch, op_id}); f != finals_.end()) {
      local = NetStatus::error(NetCode::kPeerLost, kNoPeer, "sync aborted before the election: " + f->second.detail);
    } else if (newest_epoch_ > epoch) {
      local = NetStatus::error(NetCode::kPeerLost, kNoPeer, "the view changed to epoch " + std::to_string(newest_epoch_) +
                                                                " before the election: call update_topology");
    } else {
      local = NetStatus::error(NetCode::kTimeout, kNoPeer, "no elected hashes from the coordinator for sync " +
                                                               std::to_string(op_id) + " within " +
                                                               std::to_string(options_.op_timeout_ms) + " ms");
    }
  }

  // 3. Transfer, over the mesh, with holders and keep-own peers mapped from peer ids to ranks
  //    in the view (peers not in it dropped).
  SyncStats sync_stats;
  if (elected) {
    std::map<PeerId, PeerId> rank_of;
    for (size_t r = 0; r < view_.members.size(); ++r) rank_of[view_.members[r].peer_id] = static_cast<PeerId>(r);
    auto to_ranks = [&](const std::vector<PeerId>& ids) {
      std::vector<PeerId> ranks;
      for (PeerId p : ids) {
        if (auto it = rank_of.find(p); it != rank_of.end()) ranks.push_back(it->second);
      }
      std::sort(ranks.begin(), ranks.end());
      return ranks;
    };
    ElectedHashes by_rank = std::move(elected->elected);
    for (ElectedBuffer& b : by_rank.buffers) b.holders = to_ranks(b.holders);
    by_rank.keep_own = to_ranks(by_rank.keep_own);
    std::vector<PeerId> ranks(view_.members.size());
    for (size_t i = 0; i < ranks.size(); ++i) ranks[i] = static_cast<PeerId>(i);
    // Fault points for the tests that kill a member mid-transfer: any member, or one that others
    // download from (it holds a buffer that a member lacks).
    MERIDIAN_FAULT_POINT("state_sync.transfer");
    bool serves = false;
    for (size_t r = 0; r < view_.members.size() && !serves; ++r) {
      for (size_t b : by_rank.missing_on(static_cast<PeerId>(r))) {
        const auto& h = by_rank.buffers[b].holders;
        serves |= std::binary_search(h.begin(), h.end(), static_cast<PeerId>(rank_));
      }
    }
    if (serves) MERIDIAN_FAULT_POINT("state_sync.serve");
    StateSyncOptions so;
    so.sync_id = op_id;
    so.timeout_ms = std::max<int64_t>(1, (deadline - ms::steady_now_us()) / 1000);
    const SyncStatus ss = sync_runner_->run(ranks, state, by_rank, so, &sync_stats);
    if (!ss.is_ok()) {
      const NetCode code = ss.code() == SyncCode::kTimeout ? NetCode::kTimeout
                           : ss.code() == SyncCode::kClosed ? NetCode::kClosed
                           : ss.code() == SyncCode::kProtocol || ss.code() == SyncCode::kHashMismatch ? NetCode::kProtocol
                           : ss.code() == SyncCode::kMessageTooLarge ? NetCode::kMessageTooLarge
                                                                     : NetCode::kPeerLost;
      local = NetStatus::error(code, ss.peer(), "state sync: " + ss.to_string());
    }
    if (stats != nullptr) {
      for (const ElectedBuffer& b : by_rank.buffers) stats->bytes_elected += b.bytes;
    }
  }
  const NetStatus st = finish_op(epoch, op_id, local, deadline);
  if (st.is_ok()) votes_ = true;
  if (stats != nullptr) {
    stats->bytes_downloaded = sync_stats.bytes_downloaded;
    stats->bytes_served = sync_stats.bytes_served;
    stats->bytes_sent = sync_stats.bytes_sent_total;
    stats->bytes_recv = sync_stats.bytes_recv_total;
    stats->buffers_downloaded = sync_stats.buffers_downloaded;
    stats->transfer_seconds = sync_stats.seconds();
    stats->seconds = (ms::steady_now_us() - start_us) / 1e6;
  }
  return st;
}

Status Communicator::leave() {
  if (left_) return Status::ok();
  left_ = true;
  stop_ = true;  // first: the coordinator closes the connection on C2M_Leave, which must not look like a loss
  send_control(ms::C2M_Leave{});
  wake_control();
  if (control_thread_.joinable()) control_thread_.join();
  {
    std::lock_guard<std::mutex> send_lock(send_mutex_);
    if (coord_fd_ >= 0) ::close(coord_fd_);
    coord_fd_ = -1;
  }
  runner_.reset();
  sync_runner_.reset();
  std::unique_ptr<ms::MeshTransport> old;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    old = std::move(mesh_);
  }
  return Status::ok();
}

}  // namespace meridian::net
