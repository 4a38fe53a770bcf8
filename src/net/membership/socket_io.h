// Blocking socket helpers with deadlines for the control connections and the handshakes:
// connect, send a frame, receive a frame, run a handshake. Every call takes an absolute
// deadline on the steady clock (SteadyClock::now_us()) and never waits past it.
//
// Deliberately not here: the mesh's data path (mesh_transport.h owns its sockets and poll loop).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "net/membership/wire.h"
#include "net/transport/socket_util.h"

namespace meridian::net::membership {

// The shared socket helpers (net/transport/socket_util.h), also under this namespace.
using net::read_all;
using net::split_host_port;
using net::steady_now_us;
using net::write_all;

// Binds and listens on "host:port" (port 0: the OS picks). Returns the fd and the bound
// address "host:port" with the real port.
struct Listener {
  int fd = -1;
  std::string address;
};
Result<Listener> listen_tcp(const std::string& address, int backlog = 1024);

// One connection attempt, finished or failed by the deadline. The fd is blocking-free (O_NONBLOCK).
Result<int> connect_tcp(const std::string& address, int64_t deadline_us);

// Typed outcome of a frame read: timeout and closed are ordinary; garbage means the
// connection is unusable.
enum class ReadCode { kOk, kTimeout, kClosed, kGarbage };
struct ReadResult {
  ReadCode code = ReadCode::kOk;
  std::string detail;
};

// Reads whole frames into `reader` until one payload is available or the deadline passes.
ReadResult read_frame(int fd, FrameReader& reader, std::vector<std::byte>* payload, int64_t deadline_us);

// Runs the connector's side of the handshake on fd. Errors are one line, naming `who`.
// *refused (optional) is set when the acceptor answered with a refusal (wrong token, other
// version): retrying will not help.
Status client_handshake(int fd, const std::string& token, const Hello& hello, const std::string& who,
                        int64_t deadline_us, bool* refused = nullptr);
// Runs the acceptor's side; on success returns the connector's Hello.
Result<Hello> server_handshake(int fd, const std::string& token, ServerHandshake::HelloCheck check,
                               const void* context, int64_t deadline_us);

}  // namespace meridian::net::membership
