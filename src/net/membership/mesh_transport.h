// The authenticated TCP mesh among the members of one view: MeshTransport's design (full mesh,
// several streams per pair, framed messages with a maximum size, one I/O thread, a deadline on
// every blocking call) with the run-token handshake of wire.h on every stream, and the view's
// epoch checked in that handshake, so a connection left over from another view is refused.
//
// Why a sibling of MeshTransport rather than MeshTransport itself: MeshTransport's hello is not
// authenticated and it owns its listening socket; a communicator rebuilds the mesh at every
// view change on the same listening socket (its address is what the coordinator publishes).
// TODO(lead): fold the handshake hook and the borrowed listener into MeshTransport and drop
// this copy.
//
// Wire: the handshake (wire.h, role kPeerToPeer, epoch, from_peer = connector's rank, stream),
// then frames { u32 magic "MRTF", u32 length, length bytes }. A garbage frame, a frame over
// max_message_bytes, or a broken connection loses that peer (kPeerLost, reported once) and
// nothing else.
//
// Threads: one I/O thread owns every socket after connect_mesh; send() queues; recv() waits on
// the inbox with its deadline; interrupt() (any thread) makes the pending or next recv return
// kClosed with the given reason. mutex_ guards the queues, the inbox and the lost flags.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/status.h"
#include "net/transport/transport.h"

namespace meridian::net::membership {

struct MeshTransportOptions {
  std::string token;                      // the run token; every stream proves it
  uint64_t epoch = 0;                     // the view's epoch; both ends of a stream must agree
  size_t streams_per_peer = 2;
  size_t max_message_bytes = 64u << 20;
  int socket_buffer_bytes = 4 << 20;      // SO_SNDBUF / SO_RCVBUF
};

class MeshTransport final : public Transport {
 public:
  // listen_fd: a listening socket owned by the caller, which outlives the transport.
  MeshTransport(const MeshTransportOptions& options, int listen_fd);
  ~MeshTransport() override;
  MeshTransport(const MeshTransport&) = delete;
  MeshTransport& operator=(const MeshTransport&) = delete;

  // Builds the mesh: peer_addresses[i] is "host:port" of peer i (this peer's own entry is not
  // used). Peers with a larger id connect to those with a smaller one, streams_per_peer times
  // each; stray or garbage connections to the listener are closed and ignored. Fails, with
  // the peers still missing, if the mesh is not complete by deadline_us (steady clock).
  Status connect_mesh(PeerId self, const std::vector<std::string>& peer_addresses, int64_t deadline_us);

  PeerId self() const override { return self_; }
  size_t peer_count() const override { return peer_count_; }
  size_t max_message_bytes() const override { return options_.max_message_bytes; }
  const Clock& clock() const override { return clock_; }
  NetStatus send(PeerId peer, std::vector<std::byte> bytes) override;
  NetStatus recv(Message* message, int64_t deadline_us) override;

  // Any thread: makes the pending (or next) recv return kClosed with this reason, once (the
  // coordinator aborted the operation, or the view changed). clear_interrupts() drops
  // interrupts nobody consumed, before the next operation starts.
  void interrupt(const std::string& reason);
  void clear_interrupts();

 private:
  struct Connection;
  struct Event {
    PeerId from = kNoPeer;
    bool peer_lost = false;
    bool interrupted = false;
    std::string detail;
    std::vector<std::byte> bytes;
  };

  void io_loop();                          // the I/O thread
  void wake_io();
  void lose_peer(PeerId peer, const std::string& detail);  // I/O thread, mutex_ not held

  MeshTransportOptions options_;
  SteadyClock clock_;
  int listen_fd_ = -1;  // borrowed
  int wake_fds_[2] = {-1, -1};  // pipe: send() and the destructor wake the I/O thread
  PeerId self_ = kNoPeer;
  size_t peer_count_ = 0;
  std::thread io_thread_;
  std::atomic<bool> stop_{false};

  // Connections: created by connect_mesh before the I/O thread starts, then owned by it;
  // their out queues are shared and guarded by mutex_.
  std::vector<std::unique_ptr<Connection>> connections_;

  std::mutex mutex_;
  std::condition_variable inbox_cv_;
  std::deque<Event> inbox_;               // guarded by mutex_
  std::vector<bool> lost_;                // guarded by mutex_: per peer
  std::vector<size_t> next_stream_;       // guarded by mutex_: round-robin per peer
  std::vector<std::vector<Connection*>> streams_;  // [peer][stream]; fixed after connect_mesh
};

}  // namespace meridian::net::membership
