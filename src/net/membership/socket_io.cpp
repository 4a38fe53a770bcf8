#include "net/membership/socket_io.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace meridian::net::membership {

Result<Listener> listen_tcp(const std::string& address, int backlog) {
  Result<std::pair<std::string, uint16_t>> hp = split_host_port(address, true);
  if (!hp) return hp.status();
  Result<sockaddr_in> addr = resolve(hp->first, hp->second);
  if (!addr) return addr.status();
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::error(std::string("socket: ") + std::strerror(errno));
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof(sockaddr_in)) != 0 || ::listen(fd, backlog) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    return Status::error("cannot listen on " + address + ": " + why, "pick another port, or port 0 to let the OS choose");
  }
  sockaddr_in bound{};
  socklen_t len = sizeof(bound);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  return Listener{fd, hp->first + ":" + std::to_string(ntohs(bound.sin_port))};
}

Result<int> connect_tcp(const std::string& address, int64_t deadline_us) {
  Result<std::pair<std::string, uint16_t>> hp = split_host_port(address);
  if (!hp) return hp.status();
  Result<sockaddr_in> addr = resolve(hp->first, hp->second);
  if (!addr) return addr.status();
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return Status::error(std::string("socket: ") + std::strerror(errno));
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  const int err = connect_by_deadline(fd, *addr, deadline_us);
  if (err != 0) {
    ::close(fd);
    return Status::error("cannot connect to " + address + ": " + std::strerror(err));
  }
  return fd;
}

ReadResult read_frame(int fd, FrameReader& reader, std::vector<std::byte>* payload, int64_t deadline_us) {
  for (;;) {
    if (reader.next(payload)) return {};
    if (reader.failed()) return {ReadCode::kGarbage, reader.error()};
    std::byte buf[16384];
    const ssize_t n = ::recv(fd, buf, std::min(sizeof(buf), reader.wanted()), MSG_DONTWAIT);
    if (n > 0) {
      reader.feed(std::span<const std::byte>(buf, static_cast<size_t>(n)));
      continue;
    }
    if (n == 0) return {ReadCode::kClosed, "connection closed by the other side"};
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      return {ReadCode::kClosed, std::string("recv: ") + std::strerror(errno)};
    }
    pollfd pfd{fd, POLLIN, 0};
    const int timeout = poll_timeout_ms(deadline_us);
    if (timeout == 0 || ::poll(&pfd, 1, timeout) == 0) return {ReadCode::kTimeout, "no message before the deadline"};
  }
}

Status client_handshake(int fd, const std::string& token, const Hello& hello, const std::string& who,
                        int64_t deadline_us, bool* refused) {
  if (refused != nullptr) *refused = false;
  ClientHandshake hs(token, hello);
  std::vector<std::byte> out = hs.start();
  FrameReader reader;
  while (!hs.done()) {
    if (!out.empty() && !write_all(fd, out.data(), out.size(), deadline_us)) {
      return Status::error("handshake with " + who + ": cannot send (connection closed or deadline)");
    }
    std::vector<std::byte> payload;
    const ReadResult r = read_frame(fd, reader, &payload, deadline_us);
    if (r.code != ReadCode::kOk) return Status::error("handshake with " + who + ": " + r.detail);
    out = hs.on_payload(payload);
  }
  if (!hs.status().is_ok()) {
    if (refused != nullptr) *refused = true;  // a verdict, or the acceptor failed its proof
    return hs.status().with_context(who);
  }
  return Status::ok();
}

Result<Hello> server_handshake(int fd, const std::string& token, ServerHandshake::HelloCheck check,
                               const void* context, int64_t deadline_us) {
  ServerHandshake hs(token, check, context);
  FrameReader reader;
  while (!hs.done()) {
    std::vector<std::byte> payload;
    const ReadResult r = read_frame(fd, reader, &payload, deadline_us);
    if (r.code != ReadCode::kOk) return Status::error("handshake: " + r.detail);
    const std::vector<std::byte> out = hs.on_payload(payload);
    if (!out.empty() && !write_all(fd, out.data(), out.size(), deadline_us)) {
      return Status::error("handshake: cannot send (connection closed or deadline)");
    }
  }
  if (!hs.status().is_ok()) return hs.status();
  return hs.hello();
}

}  // namespace meridian::net::membership
