#include "coord/coordinator_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/assert.h"
#include "net/membership/socket_io.h"

namespace meridian::coord {

namespace {

std::string check_coordinator_hello(const wire::Hello& hello, const void*) {
  if (hello.role != wire::Role::kPeerToCoordinator) return "this is the coordinator, not a peer's mesh port";
  return {};
}

std::string peer_name(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return "?";
  char host[INET_ADDRSTRLEN] = {0};
  ::inet_ntop(AF_INET, &a.sin_addr, host, sizeof(host));
  return std::string(host) + ":" + std::to_string(ntohs(a.sin_port));
}

}  // namespace

struct CoordinatorServer::Connection {
  Connection(ConnId id_, int fd_, const std::string& token, int64_t deadline)
      : id(id_), fd(fd_), handshake(token, &check_coordinator_hello, nullptr), handshake_deadline_us(deadline) {}
  ConnId id;
  int fd;
  std::string name;                 // remote host:port, for logs
  wire::FrameReader reader;
  wire::ServerHandshake handshake;
  int64_t handshake_deadline_us;
  bool authenticated = false;
  bool closing = false;             // close once `out` is flushed (a refusal verdict)
  std::vector<std::byte> out;
  size_t out_sent = 0;
};

CoordinatorServer::CoordinatorServer(const CoordinatorServerOptions& options)
    : options_(options), state_(options.config) {}

CoordinatorServer::~CoordinatorServer() {
  for (auto& [id, c] : connections_) ::close(c->fd);
  if (listen_fd_ >= 0) ::close(listen_fd_);
  for (int fd : stop_fds_) {
    if (fd >= 0) ::close(fd);
  }
}

Result<std::unique_ptr<CoordinatorServer>> CoordinatorServer::start(const CoordinatorServerOptions& options) {
  if (options.token.empty()) return Status::error("coordinator: empty run token", "pass a token file with a secret");
  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer(options));
  Result<net::membership::Listener> l = net::membership::listen_tcp(options.listen);
  if (!l) return l.status();
  s->listen_fd_ = l->fd;
  s->address_ = l->address;
  ::fcntl(s->listen_fd_, F_SETFL, ::fcntl(s->listen_fd_, F_GETFL, 0) | O_NONBLOCK);
  if (::pipe2(s->stop_fds_, O_CLOEXEC | O_NONBLOCK) != 0) return Status::error(std::string("pipe: ") + std::strerror(errno));
  return s;
}

void CoordinatorServer::stop() {
  const char b = 1;
  [[maybe_unused]] const ssize_t n = ::write(stop_fds_[1], &b, 1);
}

void CoordinatorServer::log(const std::string& line) const {
  std::fprintf(stderr, "coordinator: %s\n", line.c_str());
  std::fflush(stderr);
}

Status CoordinatorServer::run() {
  std::vector<pollfd> fds;
  std::vector<ConnId> ids;
  for (;;) {
    const int64_t now = net::membership::steady_now_us();
    apply(state_.handle(EvTick{}, now));
    int64_t wake_at = state_.next_deadline_us();
    for (auto& [id, c] : connections_) {
      if (!c->authenticated) wake_at = std::min(wake_at, c->handshake_deadline_us);
    }
    int timeout_ms = -1;
    if (wake_at != INT64_MAX) timeout_ms = static_cast<int>(std::clamp<int64_t>((wake_at - now + 999) / 1000, 0, 60'000));

    fds.clear();
    ids.clear();
    fds.push_back(pollfd{stop_fds_[0], POLLIN, 0});
    fds.push_back(pollfd{listen_fd_, POLLIN, 0});
    for (auto& [id, c] : connections_) {
      fds.push_back(pollfd{c->fd, static_cast<short>(POLLIN | (c->out_sent < c->out.size() ? POLLOUT : 0)), 0});
      ids.push_back(id);
    }
    if (::poll(fds.data(), fds.size(), timeout_ms) < 0) {
      if (errno == EINTR) continue;
      return Status::error(std::string("coordinator poll: ") + std::strerror(errno));
    }
    if (fds[0].revents & POLLIN) {
      log("stopping");
      return Status::ok();
    }
    const int64_t t = net::membership::steady_now_us();
    if (fds[1].revents & POLLIN) accept_all(t);
    for (size_t i = 2; i < fds.size(); ++i) {
      auto it = connections_.find(ids[i - 2]);
      if (it == connections_.end()) continue;  // closed by an action meanwhile
      Connection& c = *it->second;
      if (fds[i].revents & POLLOUT) flush(c);
      if (connections_.count(ids[i - 2]) == 0) continue;
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) on_readable(c, t);
    }
    // Handshakes that did not finish in time.
    std::vector<ConnId> late;
    for (auto& [id, c] : connections_) {
      if (!c->authenticated && t >= c->handshake_deadline_us) late.push_back(id);
    }
    for (ConnId id : late) close_connection(*connections_[id], "handshake not finished in time", t);
  }
}

void CoordinatorServer::accept_all(int64_t now_us) {
  for (;;) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    if (connections_.size() >= options_.max_connections) {
      ::close(fd);
      log("refused a connection: too many connections");
      continue;
    }
    const ConnId id = next_conn_++;
    auto c = std::make_unique<Connection>(id, fd, options_.token, now_us + options_.handshake_timeout_us);
    c->name = peer_name(fd);
    connections_[id] = std::move(c);
  }
}

void CoordinatorServer::on_readable(Connection& c, int64_t now_us) {
  for (;;) {
    std::byte buf[65536];
    const ssize_t n = ::recv(c.fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n == 0) return close_connection(c, "closed by the peer", now_us);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
      return close_connection(c, std::string("recv: ") + std::strerror(errno), now_us);
    }
    c.reader.feed(std::span<const std::byte>(buf, static_cast<size_t>(n)));
    std::vector<std::byte> payload;
    const ConnId id = c.id;
    while (connections_.count(id) != 0 && !c.closing && c.reader.next(&payload)) on_payload(c, payload, now_us);
    if (connections_.count(id) == 0 || c.closing) return;
    if (c.reader.failed()) return close_connection(c, c.reader.error(), now_us);
  }
}

void CoordinatorServer::on_payload(Connection& c, std::vector<std::byte>& payload, int64_t now_us) {
  if (!c.authenticated) {
    std::vector<std::byte> reply = c.handshake.on_payload(payload);
    if (!reply.empty()) queue(c, std::move(reply));
    if (!c.handshake.done()) return;
    if (!c.handshake.status().is_ok()) {
      log("refused connection from " + c.name + ": " + c.handshake.status().message());
      c.closing = true;  // after the verdict is flushed
      flush(c);
      return;
    }
    c.authenticated = true;
    return;
  }
  Result<wire::ControlMessage> m = wire::decode_message(payload);
  if (!m) return close_connection(c, "bad message: " + m.status().message(), now_us);
  apply(state_.handle(EvMessage{c.id, std::move(*m)}, now_us));
}

void CoordinatorServer::apply(const std::vector<Action>& actions) {
  for (const Action& a : actions) {
    if (a.kind == Action::Kind::kLog) {
      log(a.text);
      continue;
    }
    auto it = connections_.find(a.conn);
    if (it == connections_.end()) continue;
    if (a.kind == Action::Kind::kSend) {
      queue(*it->second, wire::encode_frame(a.message));
    } else {
      it->second->closing = true;
      flush(*it->second);
    }
  }
}

void CoordinatorServer::queue(Connection& c, std::vector<std::byte> bytes) {
  if (c.out.size() - c.out_sent + bytes.size() > options_.max_output_bytes) {
    log("closing connection from " + c.name + ": it does not read (output queue full)");
    c.closing = true;
    c.out.clear();
    c.out_sent = 0;
    flush(c);  // closes it
    return;
  }
  c.out.insert(c.out.end(), bytes.begin(), bytes.end());
  flush(c);
}

void CoordinatorServer::flush(Connection& c) {
  while (c.out_sent < c.out.size()) {
    const ssize_t n = ::send(c.fd, c.out.data() + c.out_sent, c.out.size() - c.out_sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n <= 0) {
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
      c.out.clear();
      c.out_sent = 0;
      break;
    }
    c.out_sent += static_cast<size_t>(n);
  }
  c.out.clear();
  c.out_sent = 0;
  if (c.closing) close_connection(c, "closed by the coordinator", net::membership::steady_now_us());
}

void CoordinatorServer::close_connection(Connection& c, std::string why, int64_t now_us) {
  const ConnId id = c.id;
  const bool authenticated = c.authenticated;
  // A refusal was logged with its reason when the handshake ended; a plain close is routine.
  const bool protocol_error = c.reader.failed() || why.rfind("bad message", 0) == 0;
  if (!authenticated && c.handshake.done()) why.clear();
  const std::string name = c.name;
  ::close(c.fd);
  connections_.erase(id);  // c is gone from here on
  if ((!authenticated && !why.empty()) || protocol_error) log("dropped connection from " + name + ": " + why);
  if (authenticated) apply(state_.handle(EvDisconnected{id, why}, now_us));
}

}  // namespace meridian::coord
