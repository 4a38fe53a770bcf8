#include "net/transport/socket_util.h"

#include <netdb.h>
#include <poll.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "net/transport/transport.h"

namespace meridian::net {

int64_t steady_now_us() { return SteadyClock().now_us(); }

int poll_timeout_ms(int64_t deadline_us) {
  const int64_t left = deadline_us - steady_now_us();
  if (left <= 0) return 0;
  return static_cast<int>(std::min<int64_t>((left + 999) / 1000, 1'000'000));
}

Result<std::pair<std::string, uint16_t>> split_host_port(const std::string& address, bool allow_port_zero) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    return Status::error("address '" + address + "' is not host:port", "write it as 127.0.0.1:4000");
  }
  char* end = nullptr;
  const unsigned long port = std::strtoul(address.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port > 65535 || (port == 0 && !allow_port_zero)) {
    return Status::error("address '" + address + "' has no valid port", "write it as 127.0.0.1:4000");
  }
  return std::make_pair(address.substr(0, colon), static_cast<uint16_t>(port));
}

Result<std::string> local_address_towards(const sockaddr_in& remote) {
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::error(std::string("socket: ") + std::strerror(errno));
  sockaddr_in local{};
  socklen_t len = sizeof local;
  const bool ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&remote), sizeof remote) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) return Status::error(std::string("no route to the coordinator's address: ") + std::strerror(err), "pass --listen with this host's address");
  char text[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &local.sin_addr, text, sizeof text);
  return std::string(text);
}

Result<sockaddr_in> resolve(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || res == nullptr) return Status::error("cannot resolve host '" + host + "': " + ::gai_strerror(rc));
  sockaddr_in addr = *reinterpret_cast<const sockaddr_in*>(res->ai_addr);
  ::freeaddrinfo(res);
  addr.sin_port = htons(port);
  return addr;
}

int connect_by_deadline(int fd, const sockaddr_in& addr, int64_t deadline_us) {
  const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(sockaddr_in));
  if (rc == 0) return 0;
  if (errno != EINPROGRESS) return errno;
  pollfd pfd{fd, POLLOUT, 0};
  if (::poll(&pfd, 1, poll_timeout_ms(deadline_us)) != 1) return ETIMEDOUT;
  int err = 0;
  socklen_t len = sizeof(err);
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
  return err;
}

bool write_all(int fd, const void* data, size_t size, int64_t deadline_us) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      p += n;
      size -= static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
    pollfd pfd{fd, POLLOUT, 0};
    if (::poll(&pfd, 1, poll_timeout_ms(deadline_us)) <= 0) return false;
  }
  return true;
}

bool read_all(int fd, void* data, size_t size, int64_t deadline_us) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = ::recv(fd, p, size, MSG_DONTWAIT);
    if (n > 0) {
      p += n;
      size -= static_cast<size_t>(n);
      continue;
    }
    if (n == 0) return false;
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, poll_timeout_ms(deadline_us)) <= 0) return false;
  }
  return true;
}

}  // namespace meridian::net
