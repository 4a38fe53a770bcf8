#include "net/membership/mesh_transport.h"

#include "core/assert.h"
#include "net/membership/socket_io.h"
#include "net/membership/wire.h"

namespace meridian::net::membership {

namespace {

// What the acceptor checks in a connector's Hello, inside the handshake (so a refusal is
// answered with its reason): the role, the view's epoch, then TcpTransport's stream rule.
struct AcceptContext {
  uint64_t epoch;
  const TcpHandshake::StreamCheck* streams;
};

std::string check_peer_hello(const Hello& hello, const void* context) {
  const auto* c = static_cast<const AcceptContext*>(context);
  if (hello.role != Role::kPeerToPeer) return "this is a peer's mesh port, not the coordinator";
  if (hello.epoch != c->epoch) {
    return "view epoch " + std::to_string(hello.epoch) + " differs from this peer's epoch " + std::to_string(c->epoch);
  }
  return (*c->streams)(hello.from_peer, hello.stream);
}

TcpTransportOptions tcp_options(const MeshTransportOptions& options) {
  TcpTransportOptions o;
  o.streams_per_peer = options.streams_per_peer;
  o.max_message_bytes = options.max_message_bytes;
  o.socket_buffer_bytes = options.socket_buffer_bytes;
  o.close_linger_ms = 0;
  o.handshake.connect = [token = options.token, epoch = options.epoch](int fd, PeerId self, PeerId peer, size_t stream,
                                                                      const std::string& address, int64_t deadline_us,
                                                                      bool* refused) {
    Hello hello;
    hello.role = Role::kPeerToPeer;
    hello.epoch = epoch;
    hello.from_peer = self;
    hello.stream = static_cast<uint32_t>(stream);
    return client_handshake(fd, token, hello, "peer " + std::to_string(peer) + " at " + address, deadline_us, refused);
  };
  o.handshake.accept = [token = options.token, epoch = options.epoch](
                           int fd, const TcpHandshake::StreamCheck& check,
                           int64_t deadline_us) -> Result<TcpHandshake::Accepted> {
    const AcceptContext context{epoch, &check};
    Result<Hello> hello = server_handshake(fd, token, &check_peer_hello, &context, deadline_us);
    if (!hello) return hello.status();
    return TcpHandshake::Accepted{hello->from_peer, hello->stream};
  };
  return o;
}

}  // namespace

MeshTransport::MeshTransport(const MeshTransportOptions& options, int listen_fd) {
  Result<std::unique_ptr<TcpTransport>> tcp = TcpTransport::adopt_listener(tcp_options(options), listen_fd);
  MERIDIAN_ASSERT(tcp, "mesh transport: {}", tcp ? std::string() : tcp.status().message());
  tcp_ = std::move(*tcp);
}

}  // namespace meridian::net::membership
