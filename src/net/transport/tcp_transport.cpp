#include "net/transport/tcp_transport.h"

#include "net/transport/socket_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "core/assert.h"

namespace meridian::net {

namespace {

constexpr uint32_t kHelloMagic = 0x4854524du;  // "MRTH"
constexpr uint32_t kFrameMagic = 0x4654524du;  // "MRTF"
constexpr uint16_t kTcpVersion = 1;
constexpr int64_t kHandshakeTimeoutUs = 2'000'000;  // a connector that does not finish its handshake is dropped

struct Hello {
  uint32_t magic = kHelloMagic;
  uint16_t version = kTcpVersion;
  uint16_t reserved = 0;
  uint32_t from_peer = 0;
  uint32_t stream = 0;
};
static_assert(sizeof(Hello) == 16, "P2P_Hello is 16 bytes");

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL, 0) | O_NONBLOCK); }

void tune_socket(int fd, int buffer_bytes) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof(buffer_bytes));
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof(buffer_bytes));
}

// The default handshake: the connector sends P2P_Hello, the acceptor checks it; no answer.
Status plain_connect(int fd, PeerId self, PeerId peer, size_t stream, const std::string& address, int64_t deadline_us,
                     bool* refused) {
  *refused = false;
  Hello hello;
  hello.from_peer = self;
  hello.stream = static_cast<uint32_t>(stream);
  if (!write_all(fd, &hello, sizeof(hello), deadline_us)) {
    return Status::error("cannot send hello to peer " + std::to_string(peer) + " at " + address);
  }
  return Status::ok();
}

Result<TcpHandshake::Accepted> plain_accept(int fd, const TcpHandshake::StreamCheck& check, int64_t deadline_us) {
  Hello hello;
  if (!read_all(fd, &hello, sizeof(hello), deadline_us)) return Status::error("no hello before the deadline");
  if (hello.magic != kHelloMagic) return Status::error("garbage instead of a hello (bad magic)");
  if (hello.version != kTcpVersion) {
    return Status::error("hello version " + std::to_string(hello.version) + ", expected " + std::to_string(kTcpVersion));
  }
  if (std::string why = check(hello.from_peer, hello.stream); !why.empty()) return Status::error(why);
  return TcpHandshake::Accepted{hello.from_peer, hello.stream};
}

}  // namespace

struct TcpTransport::Connection {
  struct OutFrame {
    uint32_t header[2] = {kFrameMagic, 0};
    std::vector<std::byte> payload;
    size_t sent = 0;  // bytes of header + payload already written
  };

  int fd = -1;
  PeerId peer = kNoPeer;
  size_t stream = 0;
  std::deque<OutFrame> queued;   // guarded by mutex_: send() appends here
  // Owned by the I/O thread:
  bool open = true;
  std::deque<OutFrame> writing;  // taken from `queued`, being written
  uint32_t header[2] = {0, 0};
  size_t header_got = 0;
  bool in_payload = false;
  std::vector<std::byte> payload;
  size_t payload_got = 0;
};

TcpTransport::TcpTransport(const TcpTransportOptions& options) : options_(options) {}

Result<std::unique_ptr<TcpTransport>> TcpTransport::listen(const TcpTransportOptions& options) {
  Result<sockaddr_in> addr = resolve(options.listen_host, options.listen_port);
  if (!addr) return addr.status();
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::error(errno_text("socket"));
  std::unique_ptr<TcpTransport> t(new TcpTransport(options));
  t->listen_fd_ = fd;  // closed by the destructor from here on
  t->owns_listen_fd_ = true;
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  tune_socket(fd, options.socket_buffer_bytes);  // inherited by accepted sockets
  const std::string where = options.listen_host + ":" + std::to_string(options.listen_port);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof(sockaddr_in)) != 0) {
    return Status::error(errno_text(("bind " + where).c_str()), "pick another port, or 0 to let the OS choose");
  }
  if (::listen(fd, 1024) != 0) return Status::error(errno_text(("listen " + where).c_str()));
  if (Status st = t->init_listener(fd, true); !st.is_ok()) return st;
  return t;
}

Result<std::unique_ptr<TcpTransport>> TcpTransport::adopt_listener(const TcpTransportOptions& options, int listen_fd) {
  MERIDIAN_ASSERT(listen_fd >= 0, "adopt_listener needs a listening socket");
  std::unique_ptr<TcpTransport> t(new TcpTransport(options));
  if (Status st = t->init_listener(listen_fd, false); !st.is_ok()) return st;
  return t;
}

Status TcpTransport::init_listener(int listen_fd, bool owned) {
  MERIDIAN_ASSERT(options_.streams_per_peer >= 1, "streams_per_peer must be >= 1");
  MERIDIAN_ASSERT(static_cast<bool>(options_.handshake.connect) == static_cast<bool>(options_.handshake.accept),
                  "a handshake needs both its connect and its accept hook");
  listen_fd_ = listen_fd;
  owns_listen_fd_ = owned;
  sockaddr_in bound{};
  socklen_t len = sizeof(bound);
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len);
  listen_port_ = ntohs(bound.sin_port);
  if (::pipe2(wake_fds_, O_CLOEXEC | O_NONBLOCK) != 0) return Status::error(errno_text("pipe"));
  return Status::ok();
}

TcpTransport::~TcpTransport() {
  stop_deadline_us_ = clock_.now_us() + options_.close_linger_ms * 1000;
  stop_ = true;
  if (io_thread_.joinable()) {
    wake_io();
    io_thread_.join();
  }
  for (auto& c : connections_) {
    if (c->fd >= 0) ::close(c->fd);
  }
  if (listen_fd_ >= 0 && owns_listen_fd_) ::close(listen_fd_);
  for (int fd : wake_fds_) {
    if (fd >= 0) ::close(fd);
  }
}

Status TcpTransport::connect_mesh(PeerId self, const std::vector<std::string>& peer_addresses, int64_t deadline_us,
                                  const std::function<bool()>& cancelled) {
  const auto cancel_status = [] {
    return Status::error(std::string(kMeshCancelled) + ": a newer view was published while this one's mesh was built");
  };
  MERIDIAN_ASSERT(!io_thread_.joinable(), "connect_mesh called twice");
  MERIDIAN_ASSERT(self < peer_addresses.size(), "self {} not among {} peers", self, peer_addresses.size());
  self_ = self;
  peer_count_ = peer_addresses.size();
  const size_t streams = options_.streams_per_peer;
  streams_.assign(peer_count_, std::vector<Connection*>(streams, nullptr));
  lost_.assign(peer_count_, false);
  next_stream_.assign(peer_count_, 0);
  const TcpHandshake::Connect handshake_connect = options_.handshake.connect ? options_.handshake.connect : plain_connect;
  const TcpHandshake::Accept handshake_accept = options_.handshake.accept ? options_.handshake.accept : plain_accept;
  auto add_connection = [&](int fd, PeerId peer, size_t stream) {
    set_nonblocking(fd);
    auto c = std::make_unique<Connection>();
    c->fd = fd;
    c->peer = peer;
    c->stream = stream;
    streams_[peer][stream] = c.get();
    connections_.push_back(std::move(c));
  };

  // Outbound first, to every peer of a smaller id: connect() completes against the listener's
  // backlog even before the peer calls accept(), and a handshake that needs an answer waits
  // for an acceptor that is already in its accept loop (id 0 accepts at once, id 1 once it is
  // connected to id 0, and so on), so the order cannot deadlock. A refused connection or
  // handshake (the peer does not listen yet, or is still on another view) is retried until the
  // deadline.
  for (PeerId peer = 0; peer < self; ++peer) {
    Result<std::pair<std::string, uint16_t>> hp = split_host_port(peer_addresses[peer]);
    if (!hp) return hp.status();
    Result<sockaddr_in> addr = resolve(hp->first, hp->second);
    if (!addr) return addr.status();
    for (size_t stream = 0; stream < streams; ++stream) {
      Status last, refusal;  // a refusal says more than the timeouts that may follow it
      for (;;) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) return Status::error(errno_text("socket"));
        tune_socket(fd, options_.socket_buffer_bytes);
        // Each attempt is bounded, so that a frozen peer (its kernel completes the connect, it
        // never answers the handshake) does not hold the build past a cancellation.
        const int64_t attempt_deadline = std::min(deadline_us, steady_now_us() + kHandshakeTimeoutUs);
        const int err = connect_by_deadline(fd, *addr, attempt_deadline);
        if (err == 0) {
          bool refused = false;
          last = handshake_connect(fd, self, peer, stream, peer_addresses[peer], attempt_deadline, &refused);
          if (last.is_ok()) {
            add_connection(fd, peer, stream);
            break;
          }
          if (refused) refusal = last;
        } else {
          last = Status::error(std::string("connect: ") + std::strerror(err));
        }
        ::close(fd);
        if (cancelled && cancelled()) return cancel_status();
        if (steady_now_us() >= deadline_us) {
          return Status::error("cannot connect to peer " + std::to_string(peer) + " at " + peer_addresses[peer] +
                                   " before the deadline: " + (refusal.is_ok() ? last : refusal).message(),
                               "check that the peer is running, reachable and in the same view");
        }
        pollfd none{-1, 0, 0};
        ::poll(&none, 0, 20);  // back off before retrying
      }
    }
  }

  // Inbound: every peer with a larger id connects `streams` times and completes the handshake.
  const TcpHandshake::StreamCheck check = [&](uint64_t from_peer, uint64_t stream) -> std::string {
    if (from_peer <= self || from_peer >= peer_count_ || stream >= streams) {
      return "unexpected rank " + std::to_string(from_peer) + " / stream " + std::to_string(stream);
    }
    if (streams_[from_peer][stream] != nullptr) return "duplicate stream";
    return {};
  };
  size_t missing = (peer_count_ - 1 - self) * streams;
  std::string last_refusal;
  while (missing > 0) {
    if (cancelled && cancelled()) return cancel_status();
    pollfd pfd{listen_fd_, POLLIN, 0};
    const int ready = ::poll(&pfd, 1, std::min(50, poll_timeout_ms(deadline_us)));
    if (ready <= 0 && steady_now_us() < deadline_us) continue;  // a slice ended: look at `cancelled` again
    if (ready <= 0) {
      std::string who;
      for (PeerId p = self + 1; p < peer_count_; ++p) {
        const size_t have = std::count_if(streams_[p].begin(), streams_[p].end(), [](Connection* c) { return c; });
        if (have < streams) who += " " + std::to_string(p);
      }
      return Status::error("mesh incomplete at the deadline: no connection from peer(s)" + who +
                               (last_refusal.empty() ? "" : " (last refused: " + last_refusal + ")"),
                           "check that every peer got the same address list (view) and is running");
    }
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) continue;
    Result<TcpHandshake::Accepted> accepted =
        handshake_accept(fd, check, std::min(deadline_us, steady_now_us() + kHandshakeTimeoutUs));
    if (accepted && !check(accepted->from_peer, accepted->stream).empty()) {
      accepted = Status::error(check(accepted->from_peer, accepted->stream));  // a hook that forgot to check
    }
    if (!accepted) {  // garbage, wrong version or token, another view, a duplicate: refuse, keep waiting
      if (accepted.status().message() != last_refusal) {  // once per reason: a connector retries
        last_refusal = accepted.status().message();
        std::fprintf(stderr, "meridian: refused a mesh connection: %s\n", last_refusal.c_str());
      }
      ::close(fd);
      continue;
    }
    tune_socket(fd, options_.socket_buffer_bytes);  // a borrowed listener was not tuned
    add_connection(fd, accepted->from_peer, accepted->stream);
    --missing;
  }
  io_thread_ = std::thread([this] { io_loop(); });
  return Status::ok();
}

NetStatus TcpTransport::send(PeerId peer, std::vector<std::byte> bytes) {
  MERIDIAN_ASSERT(io_thread_.joinable(), "send before connect_mesh");
  MERIDIAN_ASSERT(peer < peer_count_ && peer != self_, "send from {} to invalid peer {} (of {})", self_, peer, peer_count_);
  if (bytes.size() > options_.max_message_bytes) {
    return NetStatus::error(NetCode::kMessageTooLarge, peer,
                            std::to_string(bytes.size()) + " bytes > max " + std::to_string(options_.max_message_bytes));
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (lost_[peer]) return NetStatus::error(NetCode::kPeerLost, peer, "peer was declared lost");
    Connection* c = streams_[peer][next_stream_[peer]++ % options_.streams_per_peer];
    Connection::OutFrame f;
    f.header[1] = static_cast<uint32_t>(bytes.size());
    f.payload = std::move(bytes);
    c->queued.push_back(std::move(f));
  }
  wake_io();
  return NetStatus::ok();
}

NetStatus TcpTransport::recv(Message* message, int64_t deadline_us) {
  std::unique_lock<std::mutex> lock(mutex_);
  const auto deadline = std::chrono::steady_clock::time_point(std::chrono::microseconds(deadline_us));
  if (!inbox_cv_.wait_until(lock, deadline, [&] { return !inbox_.empty(); })) {
    return NetStatus::error(NetCode::kTimeout, kNoPeer, "no message before the deadline");
  }
  Event e = std::move(inbox_.front());
  inbox_.pop_front();
  if (e.interrupted) return NetStatus::error(NetCode::kClosed, kNoPeer, e.detail);
  if (e.peer_lost) return NetStatus::error(NetCode::kPeerLost, e.from, e.detail);
  message->peer = e.from;
  message->bytes = std::move(e.bytes);
  return NetStatus::ok();
}

void TcpTransport::interrupt(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  Event e;
  e.interrupted = true;
  e.detail = reason;
  inbox_.push_front(std::move(e));
  inbox_cv_.notify_all();
}

void TcpTransport::clear_interrupts() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::erase_if(inbox_, [](const Event& e) { return e.interrupted; });
}

void TcpTransport::wake_io() {
  const char b = 1;
  [[maybe_unused]] const ssize_t n = ::write(wake_fds_[1], &b, 1);  // EAGAIN: a wake-up is already pending
}

void TcpTransport::lose_peer(PeerId peer, const std::string& detail) {
  for (Connection* c : streams_[peer]) {
    if (c->open) {
      ::shutdown(c->fd, SHUT_RDWR);
      c->open = false;
    }
    c->writing.clear();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  for (Connection* c : streams_[peer]) c->queued.clear();
  if (lost_[peer]) return;
  lost_[peer] = true;
  inbox_.push_back(Event{peer, true, false, detail, {}});
  inbox_cv_.notify_all();
}

void TcpTransport::io_loop() {
  std::vector<pollfd> fds;
  std::vector<Connection*> by_index;
  for (;;) {
    fds.assign(1, pollfd{wake_fds_[0], POLLIN, 0});
    by_index.assign(1, nullptr);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& c : connections_) {
        while (!c->queued.empty()) {
          c->writing.push_back(std::move(c->queued.front()));
          c->queued.pop_front();
        }
      }
    }
    int poll_timeout = -1;
    if (stop_) {
      // Closing: keep writing until nothing is pending on an open connection, or the linger ends.
      bool pending = false;
      for (auto& c : connections_) pending = pending || (c->open && !c->writing.empty());
      const int64_t left_us = stop_deadline_us_ - clock_.now_us();
      if (!pending || left_us <= 0) break;
      poll_timeout = static_cast<int>(left_us / 1000) + 1;
    }
    for (auto& c : connections_) {
      if (!c->open) continue;
      fds.push_back(pollfd{c->fd, static_cast<short>(POLLIN | (c->writing.empty() ? 0 : POLLOUT)), 0});
      by_index.push_back(c.get());
    }
    if (::poll(fds.data(), fds.size(), poll_timeout) < 0) continue;  // EINTR
    if (fds[0].revents & POLLIN) {
      char drain[256];
      while (::read(wake_fds_[0], drain, sizeof(drain)) > 0) {
      }
    }
    for (size_t i = 1; i < fds.size(); ++i) {
      Connection* c = by_index[i];
      if (!c->open) continue;  // closed by lose_peer for another stream of the same peer
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        // Read what is there: frame header, then payload straight into its message buffer.
        for (;;) {
          ssize_t n;
          if (!c->in_payload) {
            n = ::recv(c->fd, reinterpret_cast<char*>(c->header) + c->header_got, 8 - c->header_got, MSG_DONTWAIT);
          } else {
            n = ::recv(c->fd, c->payload.data() + c->payload_got, c->payload.size() - c->payload_got, MSG_DONTWAIT);
          }
          if (n == 0) {
            lose_peer(c->peer, "connection closed by the peer");
            break;
          }
          if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
            lose_peer(c->peer, errno_text("recv"));
            break;
          }
          if (!c->in_payload) {
            c->header_got += static_cast<size_t>(n);
            if (c->header_got < 8) continue;
            if (c->header[0] != kFrameMagic) {
              lose_peer(c->peer, "garbage on stream " + std::to_string(c->stream) + " (bad frame magic)");
              break;
            }
            if (c->header[1] > options_.max_message_bytes) {
              lose_peer(c->peer, "frame of " + std::to_string(c->header[1]) + " bytes > max " +
                                     std::to_string(options_.max_message_bytes));
              break;
            }
            c->in_payload = true;
            c->payload.assign(c->header[1], std::byte{0});
            c->payload_got = 0;
          } else {
            c->payload_got += static_cast<size_t>(n);
          }
          if (c->in_payload && c->payload_got == c->payload.size()) {
            std::lock_guard<std::mutex> lock(mutex_);
            inbox_.push_back(Event{c->peer, false, false, {}, std::move(c->payload)});
            inbox_cv_.notify_all();
            c->payload = {};
            c->in_payload = false;
            c->header_got = 0;
          }
        }
      }
      if (c->open && (fds[i].revents & POLLOUT)) {
        while (!c->writing.empty()) {
          Connection::OutFrame& f = c->writing.front();
          iovec iov[2];
          int iovcnt = 0;
          if (f.sent < 8) {
            iov[iovcnt++] = iovec{reinterpret_cast<char*>(f.header) + f.sent, 8 - f.sent};
            iov[iovcnt++] = iovec{f.payload.data(), f.payload.size()};
          } else {
            iov[iovcnt++] = iovec{f.payload.data() + (f.sent - 8), f.payload.size() - (f.sent - 8)};
          }
          msghdr msg{};
          msg.msg_iov = iov;
          msg.msg_iovlen = static_cast<size_t>(iovcnt);
          const ssize_t n = ::sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
          if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) lose_peer(c->peer, errno_text("send"));
            break;
          }
          f.sent += static_cast<size_t>(n);
          if (f.sent == 8 + f.payload.size()) c->writing.pop_front();
        }
      }
    }
  }
}

}  // namespace meridian::net
