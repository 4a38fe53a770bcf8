// Small POSIX socket helpers shared by the TCP transport and the coordinator protocol: the
// monotonic clock in microseconds, deadlines as poll() timeouts, "host:port" parsing and
// resolution, and whole-buffer reads and writes that give up at a deadline.
#pragma once

#include <netinet/in.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "core/status.h"

namespace meridian::net {

int64_t steady_now_us();
// Milliseconds left until deadline_us (steady clock), rounded up, 0 when passed: for poll().
int poll_timeout_ms(int64_t deadline_us);

// "host:port" -> (host, port). port 0 is allowed only when allow_port_zero (listen addresses).
Result<std::pair<std::string, uint16_t>> split_host_port(const std::string& address, bool allow_port_zero = false);
// IPv4 address of host (a name or a dotted quad) with the port set.
Result<sockaddr_in> resolve(const std::string& host, uint16_t port);

// The local IPv4 address this host would use to reach `remote` (a routing lookup; nothing is
// sent): what a node tells others to connect to when it was not told its address.
Result<std::string> local_address_towards(const sockaddr_in& remote);

// Connects the non-blocking socket fd to addr, waiting until the deadline. Returns 0 or the
// errno of the failure (ETIMEDOUT when the deadline passed).
int connect_by_deadline(int fd, const sockaddr_in& addr, int64_t deadline_us);

// Writes / reads exactly `size` bytes on a non-blocking socket, waiting with poll() until the
// deadline. false: the deadline passed, the peer closed, or a socket error.
bool write_all(int fd, const void* data, size_t size, int64_t deadline_us);
bool read_all(int fd, void* data, size_t size, int64_t deadline_us);

}  // namespace meridian::net
