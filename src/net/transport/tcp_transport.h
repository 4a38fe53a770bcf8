// TCP transport: a full mesh between the peers of a view, several TCP streams per pair (one
// stream cannot fill a long fat pipe), framed messages with a maximum size, large socket
// buffers, and a deadline on every blocking call.
//
// Wire: each connection starts with a handshake from the connecting side. By default it is
//   P2P_Hello { u32 magic "MRTH", u16 version, u16 reserved, u32 from_peer, u32 stream }
// and options.handshake can replace it (the authenticated mesh of membership/ runs the
// run-token HMAC handshake there). Then the connection carries frames
// { u32 magic "MRTF", u32 length, length bytes }. A connection whose handshake or frame is
// garbage, of the wrong version, or longer than max_message_bytes is closed; since a message
// may have been lost with it, its peer is reported lost (kPeerLost) -- and nothing else is
// affected.
//
// Threads: one I/O thread per transport owns every socket and runs a poll() loop; send()
// queues a frame for the I/O thread and returns; recv() waits on the inbox with its deadline;
// interrupt() (any thread) makes the pending or next recv return kClosed.
// Destruction flushes: queued frames are still sent for up to close_linger_ms.
// mutex_ guards the queues, the inbox and the lost flags.
//
// The listening socket is either the transport's own (listen()) or borrowed from the caller
// (adopt_listener(): a communicator rebuilds the mesh at every view change on the address the
// coordinator publishes).
//
// Deliberately not here: reconnection (a lost peer stays lost; the view changes), and flow
// control beyond TCP's own: send() queues without bound; the all-reduce bounds what it has
// queued per destination itself.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/status.h"
#include "net/transport/transport.h"

namespace meridian::net {

// Replaces the plain P2P_Hello on every new stream (both hooks or neither). Both run in
// connect_mesh on a non-blocking socket, before the stream joins the mesh, and must not wait
// past deadline_us.
struct TcpHandshake {
  // Connecting side: introduce this peer (self, stream) to `peer` at `address`. An error is
  // retried on a new connection until the mesh deadline; *refused (set it when the acceptor
  // refused, e.g. another view or token) keeps its reason for the final error.
  using Connect = std::function<Status(int fd, PeerId self, PeerId peer, size_t stream, const std::string& address,
                                       int64_t deadline_us, bool* refused)>;
  // The acceptor's rule for a stream it is told about: empty if (from_peer, stream) is still
  // expected, else the one-line reason to refuse it (a wrong rank, a duplicate).
  using StreamCheck = std::function<std::string(uint64_t from_peer, uint64_t stream)>;
  struct Accepted {
    PeerId from_peer = kNoPeer;
    size_t stream = 0;
  };
  // Accepting side: learn who connected; refuse (an error with the reason) unless check passes.
  using Accept = std::function<Result<Accepted>(int fd, const StreamCheck& check, int64_t deadline_us)>;

  Connect connect;
  Accept accept;
};

struct TcpTransportOptions {
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;               // 0: the OS picks one; see listen_port()
  size_t streams_per_peer = 2;
  size_t max_message_bytes = 64u << 20;
  int socket_buffer_bytes = 4 << 20;      // SO_SNDBUF / SO_RCVBUF
  int64_t close_linger_ms = 2000;         // on destruction, how long queued frames may still be sent
  TcpHandshake handshake = {};            // empty: the plain P2P_Hello
};

// The message of a connect_mesh that `cancelled` stopped begins with this.
inline constexpr const char* kMeshCancelled = "mesh build cancelled";

class TcpTransport final : public Transport {
 public:
  // Binds and listens. Fails with the address and errno text.
  static Result<std::unique_ptr<TcpTransport>> listen(const TcpTransportOptions& options);
  // Accepts on listen_fd, a listening socket owned by the caller that outlives the transport
  // (options.listen_host/listen_port are not used).
  static Result<std::unique_ptr<TcpTransport>> adopt_listener(const TcpTransportOptions& options, int listen_fd);
  ~TcpTransport() override;
  TcpTransport(const TcpTransport&) = delete;
  TcpTransport& operator=(const TcpTransport&) = delete;

  uint16_t listen_port() const { return listen_port_; }

  // Builds the mesh: peer_addresses[i] is "host:port" of peer i (this peer's own entry is not
  // used). Peers with a larger id connect to those with a smaller one, streams_per_peer times
  // each; stray or garbage connections to the listener are closed and ignored. Fails, with
  // the peers still missing, if the mesh is not complete by deadline_us (steady clock), or
  // as soon as `cancelled` (polled every few tens of ms; a handshake waits at most 2 s) says
  // so: a member died or froze while the others build the mesh, and the coordinator published
  // the view without it. A cancelled build returns kMeshCancelled in the message.
  Status connect_mesh(PeerId self, const std::vector<std::string>& peer_addresses, int64_t deadline_us,
                      const std::function<bool()>& cancelled = {});

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

  explicit TcpTransport(const TcpTransportOptions& options);  // in the .cpp: Connection is incomplete here
  Status init_listener(int listen_fd, bool owned);  // takes the listener, finds its port, makes the wake pipe
  void io_loop();                          // the I/O thread
  void wake_io();
  void lose_peer(PeerId peer, const std::string& detail);  // I/O thread, mutex_ not held

  TcpTransportOptions options_;
  SteadyClock clock_;
  int listen_fd_ = -1;
  bool owns_listen_fd_ = false;  // false: borrowed from the caller (adopt_listener)
  uint16_t listen_port_ = 0;
  int wake_fds_[2] = {-1, -1};  // pipe: send() and the destructor wake the I/O thread
  PeerId self_ = kNoPeer;
  size_t peer_count_ = 0;
  std::thread io_thread_;
  // Set by the destructor: the I/O thread finishes sending what is queued, until
  // stop_deadline_us_ at the latest, then exits. Frames a peer is waiting for are not dropped.
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> stop_deadline_us_{0};

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

}  // namespace meridian::net
