// An in-memory simulated network: N endpoints implementing Transport, a simulated clock, and
// per-link latency, jitter and bandwidth, all driven from one thread. With the same seed and
// the same sequence of calls it delivers the same messages at the same simulated times, so a
// failing simulation replays exactly from its seed (STYLE.md habit 2).
//
// Time moves only in advance_to() (or in a recv() whose deadline lies in the future, which
// advances the shared clock to the next delivery or to the deadline: handy for one peer, but a
// simulation of several peers polls with deadline = now and advances the clock itself).
//
// Faults: crash(peer) drops every message to or from the peer, closes its endpoint, and tells
// every other live peer kPeerLost after a detection delay (the stand-in for the heartbeat
// timeout). A frozen peer (SIGSTOP) needs no support here: the driver simply stops running it,
// and its peers see nothing but silence.
//
// Not thread-safe: one thread owns the network and all its endpoints.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "core/hash.h"
#include "net/transport/transport.h"

namespace meridian::net {

struct SimNetworkConfig {
  size_t peers = 2;
  int64_t latency_us = 1000;               // one-way, every link
  int64_t jitter_us = 0;                   // extra delay, uniform in [0, jitter_us], per message
  double bandwidth_bytes_per_us = 0.0;     // per directed link; 0 = unlimited (1.0 = 8 Mbit/s)
  size_t max_message_bytes = 64u << 20;
  uint64_t seed = 1;                       // jitter draws
};

class SimNetwork;

class SimTransport final : public Transport {
 public:
  PeerId self() const override { return self_; }
  size_t peer_count() const override;
  size_t max_message_bytes() const override;
  const Clock& clock() const override;
  NetStatus send(PeerId peer, std::vector<std::byte> bytes) override;
  NetStatus recv(Message* message, int64_t deadline_us) override;

  uint64_t bytes_sent_total() const { return bytes_sent_total_; }
  uint64_t bytes_recv_total() const { return bytes_recv_total_; }

 private:
  friend class SimNetwork;
  SimTransport(SimNetwork& network, PeerId self) : network_(network), self_(self) {}

  struct Delivery {
    PeerId from = kNoPeer;
    bool peer_lost = false;  // a loss notice instead of a message
    std::vector<std::byte> bytes;
  };

  SimNetwork& network_;
  PeerId self_;
  std::deque<Delivery> inbox_;     // delivered, not yet taken by recv
  std::vector<bool> known_lost_;   // peers whose loss notice reached this endpoint
  uint64_t bytes_sent_total_ = 0;
  uint64_t bytes_recv_total_ = 0;
};

class SimNetwork {
 public:
  explicit SimNetwork(const SimNetworkConfig& config);
  SimNetwork(const SimNetwork&) = delete;
  SimNetwork& operator=(const SimNetwork&) = delete;

  SimTransport& endpoint(PeerId peer);
  size_t peer_count() const { return endpoints_.size(); }
  const ManualClock& clock() const { return clock_; }
  int64_t now_us() const { return clock_.now_us(); }

  // Moves every event due at or before now into the endpoints' inboxes.
  void deliver_due();
  // Time of the earliest undelivered event, if any.
  std::optional<int64_t> next_event_us() const;
  // Advances the clock to t_us (>= now) and delivers what is due.
  void advance_to(int64_t t_us);

  // Kills a peer: its in-flight messages (both ways) and inbox are dropped, its endpoint
  // returns kClosed from then on, and every live peer receives kPeerLost for it after
  // detect_after_us.
  void crash(PeerId peer, int64_t detect_after_us);
  bool is_up(PeerId peer) const { return up_.at(peer); }

  uint64_t messages_delivered() const { return messages_delivered_; }
  uint64_t messages_dropped() const { return messages_dropped_; }

 private:
  friend class SimTransport;
  struct Event {
    PeerId from = kNoPeer;
    PeerId to = kNoPeer;
    bool peer_lost = false;
    std::vector<std::byte> bytes;
  };
  using EventKey = std::pair<int64_t, uint64_t>;  // (delivery time, sequence number): total order

  NetStatus enqueue(PeerId from, PeerId to, std::vector<std::byte> bytes);

  SimNetworkConfig config_;
  ManualClock clock_;
  SplitMix64 rng_;
  std::vector<std::unique_ptr<SimTransport>> endpoints_;
  std::vector<bool> up_;
  std::vector<int64_t> link_free_us_;  // [from * peers + to]: when the link finishes its queue
  std::map<EventKey, Event> in_flight_;
  uint64_t next_seq_ = 0;
  uint64_t messages_delivered_ = 0;
  uint64_t messages_dropped_ = 0;
};

}  // namespace meridian::net
