// The authenticated TCP mesh among the members of one view: a TcpTransport (full mesh, several
// streams per pair, framed messages with a maximum size, one I/O thread, a deadline on every
// blocking call) whose handshake hook runs the run-token handshake of wire.h on every stream,
// with the view's epoch checked in it, so a connection left over from another view is
// refused. It accepts on a listening socket borrowed from the caller: a communicator rebuilds
// the mesh at every view change on the same socket (its address is what the coordinator
// publishes).
//
// Wire: the handshake (wire.h, role kPeerToPeer, epoch, from_peer = connector's rank, stream),
// then TcpTransport's frames { u32 magic "MRTF", u32 length, length bytes }. A garbage frame, a
// frame over max_message_bytes, or a broken connection loses that peer (kPeerLost, reported
// once) and nothing else.
//
// Threads: as TcpTransport; interrupt() (any thread) makes the pending or next recv return
// kClosed with the given reason. Destruction does not linger: a mesh is dropped when its view
// is over, and frames still queued then belong to an operation that has ended.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "net/transport/tcp_transport.h"
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
  ~MeshTransport() override = default;
  MeshTransport(const MeshTransport&) = delete;
  MeshTransport& operator=(const MeshTransport&) = delete;

  // Builds the mesh: peer_addresses[i] is "host:port" of peer i (this peer's own entry is not
  // used). Peers with a larger id connect to those with a smaller one, streams_per_peer times
  // each; stray, unauthenticated or other-view connections to the listener are refused and
  // ignored. Fails, with the peers still missing, if the mesh is not complete by deadline_us
  // (steady clock).
  // Stops early once `cancelled` says so (see TcpTransport::connect_mesh).
  Status connect_mesh(PeerId self, const std::vector<std::string>& peer_addresses, int64_t deadline_us,
                      const std::function<bool()>& cancelled = {}) {
    return tcp_->connect_mesh(self, peer_addresses, deadline_us, cancelled);
  }

  PeerId self() const override { return tcp_->self(); }
  size_t peer_count() const override { return tcp_->peer_count(); }
  size_t max_message_bytes() const override { return tcp_->max_message_bytes(); }
  const Clock& clock() const override { return tcp_->clock(); }
  NetStatus send(PeerId peer, std::vector<std::byte> bytes) override { return tcp_->send(peer, std::move(bytes)); }
  NetStatus recv(Message* message, int64_t deadline_us) override { return tcp_->recv(message, deadline_us); }

  // See TcpTransport::interrupt / clear_interrupts.
  void interrupt(const std::string& reason) { tcp_->interrupt(reason); }
  void clear_interrupts() { tcp_->clear_interrupts(); }

 private:
  std::unique_ptr<TcpTransport> tcp_;
};

}  // namespace meridian::net::membership
