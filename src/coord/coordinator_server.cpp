#include "coord/coordinator_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <string_view>
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

// Appends `text` as a JSON string literal (quotes included). Valid UTF-8 is copied; other
// bytes (peers send the addresses) become U+FFFD, so every line parses.
void append_json_string(std::string& out, const std::string& text) {
  out += '"';
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
          if (c < 0x20 || c == 0x7f) {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "\\u%04x", c);
            out += buf;
          } else {
            out += static_cast<char>(c);
          }
      }
      ++i;
      continue;
    }
    // A multi-byte sequence: its length from the lead byte, then continuation bytes, no
    // overlong forms, no surrogates, nothing above U+10FFFF.
    size_t len = 0;
    uint32_t cp = 0;
    if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef) len = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07;
    bool ok = len != 0 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) {
      ok = (p[i + k] & 0xc0) == 0x80;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if (ok) ok = !(len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) && !(len == 4 && (cp < 0x10000 || cp > 0x10ffff));
    if (ok) {
      out.append(text, i, len);
      i += len;
    } else {
      out += "\\ufffd";
      ++i;
    }
  }
  out += '"';
}

void append_key(std::string& out, const char* key) {
  out += ",\"";
  out += key;
  out += "\":";
}

void append_ids(std::string& out, const std::vector<PeerId>& ids) {
  out += '[';
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(ids[i]);
  }
  out += ']';
}

double unix_now_s() {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch());
  return static_cast<double>(ms.count()) / 1000.0;
}

}  // namespace

std::string run_log_line(double unix_time_s, const std::string& msg, const LogEvent& event) {
  char t[32];
  std::snprintf(t, sizeof(t), "%.3f", unix_time_s);
  std::string out = "{\"t\":";
  out += t;
  out += ",\"event\":";
  append_json_string(out, event.kind.empty() ? "note" : event.kind);
  out += ",\"msg\":";
  append_json_string(out, msg);
  auto number = [&](const char* key, const auto& value) {  // an optional integer field
    if (!value) return;
    append_key(out, key);
    out += std::to_string(*value);
  };
  number("peer", event.peer);
  if (!event.address.empty()) {
    append_key(out, "address");
    append_json_string(out, event.address);
  }
  // Epochs and op ids use all 64 bits (a restarted coordinator's epochs start high; an op id is
  // round << 32 | sequence): as JSON numbers they would lose precision past 2^53 in most JSON
  // readers, so they are written as decimal strings.
  auto text_number = [&](const char* key, const std::optional<uint64_t>& value) {
    if (!value) return;
    append_key(out, key);
    append_json_string(out, std::to_string(*value));
  };
  text_number("epoch", event.epoch);
  number("round", event.round);
  text_number("op_id", event.op_id);
  number("size", event.size);
  number("revision", event.revision);
  if (event.members) {
    append_key(out, "members");
    append_ids(out, *event.members);
  }
  if (!event.admitted.empty()) {
    append_key(out, "admitted");
    append_ids(out, event.admitted);
  }
  if (!event.reason.empty()) {
    append_key(out, "reason");
    append_json_string(out, event.reason);
  }
  out += '}';
  return out;
}

uint64_t last_elected_revision(const std::string& log_tail) {
  static const std::string kSync = "\"event\":\"sync\"", kRevision = "\"revision\":";
  size_t end = log_tail.size();
  while (end > 0) {
    const size_t nl = log_tail.rfind('\n', end - 1);
    const size_t begin = nl == std::string::npos ? 0 : nl + 1;
    const std::string_view line(log_tail.data() + begin, end - begin);
    // Keys and values of a line are unescaped only outside its strings, so these cannot come
    // from a message's text.
    const size_t r = line.find(kRevision);
    if (line.find(kSync) != std::string_view::npos && r != std::string_view::npos) {
      uint64_t v = 0;
      for (size_t i = r + kRevision.size(); i < line.size() && line[i] >= '0' && line[i] <= '9'; ++i) {
        v = v * 10 + static_cast<uint64_t>(line[i] - '0');
      }
      return v;
    }
    if (nl == std::string::npos) break;
    end = nl;
  }
  return 0;
}

namespace {

// The last kMaxTail bytes of the run log, from the first full line on; empty if unreadable.
std::string read_log_tail(const std::string& path) {
  constexpr long kMaxTail = 4L << 20;
  std::FILE* f = std::fopen(path.c_str(), "rbe");
  if (f == nullptr) return {};
  std::string tail;
  if (std::fseek(f, 0, SEEK_END) == 0) {
    const long size = std::ftell(f);
    const long from = std::max(0L, size - kMaxTail);
    if (size > 0 && std::fseek(f, from, SEEK_SET) == 0) {
      tail.resize(static_cast<size_t>(size - from));
      tail.resize(std::fread(tail.data(), 1, tail.size(), f));
      if (from > 0) {
        const size_t nl = tail.find('\n');
        tail.erase(0, nl == std::string::npos ? tail.size() : nl + 1);
      }
    }
  }
  std::fclose(f);
  return tail;
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
  if (log_file_ != nullptr) std::fclose(log_file_);
  for (int fd : stop_fds_) {
    if (fd >= 0) ::close(fd);
  }
}

Result<std::unique_ptr<CoordinatorServer>> CoordinatorServer::start(const CoordinatorServerOptions& options) {
  if (options.token.empty()) return Status::error("coordinator: empty run token", "pass a token file with a secret");
  CoordinatorServerOptions resumed = options;
  if (!options.log_path.empty()) {
    resumed.config.known_revision =
        std::max(resumed.config.known_revision, last_elected_revision(read_log_tail(options.log_path)));
  }
  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer(resumed));
  bool log_continues = false;
  if (!options.log_path.empty()) {
    s->log_file_ = std::fopen(options.log_path.c_str(), "ae");  // e: O_CLOEXEC
    if (s->log_file_ == nullptr) {
      return Status::error("coordinator: cannot open the run log " + options.log_path + ": " + std::strerror(errno),
                           "pass --log a writable file path whose directory exists (it is appended to)");
    }
    log_continues = std::fseek(s->log_file_, 0, SEEK_END) == 0 && std::ftell(s->log_file_) > 0;
  }
  Result<net::membership::Listener> l = net::membership::listen_tcp(options.listen);
  if (!l) return l.status();
  s->listen_fd_ = l->fd;
  s->address_ = l->address;
  ::fcntl(s->listen_fd_, F_SETFL, ::fcntl(s->listen_fd_, F_GETFL, 0) | O_NONBLOCK);
  if (::pipe2(s->stop_fds_, O_CLOEXEC | O_NONBLOCK) != 0) return Status::error(std::string("pipe: ") + std::strerror(errno));
  LogEvent started;
  started.kind = log_continues ? "restarted" : "started";
  started.address = s->address_;
  started.revision = resumed.config.known_revision;
  s->log("listening on " + s->address_ + " (incarnation " + std::to_string(options.config.incarnation) + ")" +
             (resumed.config.known_revision > options.config.known_revision
                  ? "; the run log says the run is at revision " + std::to_string(resumed.config.known_revision)
                  : ""),
         started);
  return s;
}

void CoordinatorServer::stop() {
  const char b = 1;
  [[maybe_unused]] const ssize_t n = ::write(stop_fds_[1], &b, 1);
}

void CoordinatorServer::log(const std::string& line, const LogEvent& event) {
  std::fprintf(stderr, "coordinator: %s\n", line.c_str());
  std::fflush(stderr);
  if (log_file_ == nullptr || log_failed_) return;
  const std::string json = run_log_line(unix_now_s(), line, event) + "\n";
  // Flushed per line: the demo tails it live. A failed write (disk full) loses the run log,
  // not the run: said once on stderr.
  if (std::fwrite(json.data(), 1, json.size(), log_file_) != json.size() || std::fflush(log_file_) != 0) {
    log_failed_ = true;
    std::fprintf(stderr, "coordinator: writing the run log %s failed: %s; the run goes on without it\n",
                 options_.log_path.c_str(), std::strerror(errno));
  }
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
      LogEvent e;
      e.kind = "stopped";
      log("stopping", e);
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
      LogEvent e;
      e.kind = "refused";
      e.reason = "too many connections";
      log("refused a connection: too many connections", e);
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
      LogEvent e;
      e.kind = "refused";
      e.address = c.name;
      e.reason = c.handshake.status().message();
      log("refused connection from " + c.name + ": " + e.reason, e);
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
      log(a.text, a.event);
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
    LogEvent e;
    e.kind = "dropped";
    e.address = c.name;
    e.reason = "it does not read (output queue full)";
    log("closing connection from " + c.name + ": " + e.reason, e);
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
  if ((!authenticated && !why.empty()) || protocol_error) {
    LogEvent e;
    e.kind = "dropped";
    e.address = name;
    e.reason = why;
    log("dropped connection from " + name + ": " + why, e);
  }
  if (authenticated) apply(state_.handle(EvDisconnected{id, why}, now_us));
}

}  // namespace meridian::coord
