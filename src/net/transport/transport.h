// The transport interface: framed messages between the peers of one view. Algorithms (the
// all-reduce, state sync) talk only to this interface (STYLE.md habit 2); TCP and the in-memory
// simulated network implement it, and the clock is injected so that a simulation runs on
// simulated time.
//
// What a transport guarantees: a message is delivered whole or not at all, at most once, to
// the peer it was sent to; nothing about order across peers, and (with several streams per
// pair) nothing about order between two messages to the same peer either: protocols carry
// their own sequence information. A peer that goes away is reported once by recv as kPeerLost.
//
// Deliberately not here: membership, authentication, retries. Every blocking call has a
// deadline; nothing waits forever.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace meridian::net {

// A peer's index in the transport's peer table (for the all-reduce: the view's member list).
using PeerId = uint32_t;
inline constexpr PeerId kNoPeer = 0xffffffffu;

// Time source. Deadlines are absolute microseconds on the transport's clock.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t now_us() const = 0;
};

// The process's monotonic clock.
class SteadyClock final : public Clock {
 public:
  int64_t now_us() const override;
};

// A clock that moves only when told: simulations and tests.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t start_us = 0) : now_us_(start_us) {}
  int64_t now_us() const override { return now_us_; }
  void advance_to(int64_t t_us);  // asserts that time does not go backwards
  void advance_by(int64_t dt_us) { advance_to(now_us_ + dt_us); }

 private:
  int64_t now_us_;
};

// Typed outcome of a transport or collective call (STYLE.md habit 8: operating failures are
// values the caller handles, with context).
enum class NetCode : uint8_t {
  kOk = 0,
  kTimeout,          // the deadline passed before anything arrived / the operation finished
  kPeerLost,         // the peer's connection broke or it was declared dead
  kMessageTooLarge,  // a message exceeds the transport's max_message_bytes
  kClosed,           // this endpoint was closed (or crashed, in a simulation)
  kProtocol,         // a malformed, unexpected or wrong-version message
};
const char* net_code_name(NetCode code);

class NetStatus {
 public:
  NetStatus() = default;  // ok
  static NetStatus ok() { return NetStatus(); }
  static NetStatus error(NetCode code, PeerId peer, std::string detail) {
    NetStatus s;
    s.code_ = code;
    s.peer_ = peer;
    s.detail_ = std::move(detail);
    return s;
  }
  bool is_ok() const { return code_ == NetCode::kOk; }
  NetCode code() const { return code_; }
  PeerId peer() const { return peer_; }  // the peer concerned, or kNoPeer
  const std::string& detail() const { return detail_; }
  // "peer_lost (peer 3): connection reset"
  std::string to_string() const;
  Status to_status() const;

 private:
  NetCode code_ = NetCode::kOk;
  PeerId peer_ = kNoPeer;
  std::string detail_;
};

struct Message {
  PeerId peer = kNoPeer;         // sender
  std::vector<std::byte> bytes;  // one whole frame as the sender passed it to send()
};

class Transport {
 public:
  virtual ~Transport() = default;

  virtual PeerId self() const = 0;
  virtual size_t peer_count() const = 0;  // peers in the table, self included
  virtual size_t max_message_bytes() const = 0;
  virtual const Clock& clock() const = 0;

  // Queues one message for `peer` and returns without waiting for the network: the transport
  // owns the bytes from here on. Fails at once with kMessageTooLarge, kPeerLost (the peer is
  // already known to be gone) or kClosed; a loss discovered later is reported by recv.
  virtual NetStatus send(PeerId peer, std::vector<std::byte> bytes) = 0;

  // Waits until a message or a peer-loss notice is available, or the clock reaches
  // deadline_us. Returns ok with *message filled, or kPeerLost with status.peer() set (each
  // loss reported once), or kTimeout. deadline_us <= now polls without waiting.
  virtual NetStatus recv(Message* message, int64_t deadline_us) = 0;
};

}  // namespace meridian::net
