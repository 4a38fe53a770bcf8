#include "net/transport/sim_transport.h"

#include <algorithm>
#include <cmath>

#include "core/assert.h"

namespace meridian::net {

// ---- SimTransport ---------------------------------------------------------------------------

size_t SimTransport::peer_count() const { return network_.peer_count(); }
size_t SimTransport::max_message_bytes() const { return network_.config_.max_message_bytes; }
const Clock& SimTransport::clock() const { return network_.clock_; }

NetStatus SimTransport::send(PeerId peer, std::vector<std::byte> bytes) {
  MERIDIAN_ASSERT(peer < network_.peer_count() && peer != self_, "send from {} to invalid peer {} (of {})", self_,
                  peer, network_.peer_count());
  if (!network_.up_[self_]) return NetStatus::error(NetCode::kClosed, self_, "this endpoint crashed");
  if (bytes.size() > max_message_bytes()) {
    return NetStatus::error(NetCode::kMessageTooLarge, peer,
                            std::to_string(bytes.size()) + " bytes > max " + std::to_string(max_message_bytes()));
  }
  if (known_lost_[peer]) return NetStatus::error(NetCode::kPeerLost, peer, "peer was declared lost");
  bytes_sent_total_ += bytes.size();
  return network_.enqueue(self_, peer, std::move(bytes));
}

NetStatus SimTransport::recv(Message* message, int64_t deadline_us) {
  for (;;) {
    network_.deliver_due();
    if (!network_.up_[self_]) return NetStatus::error(NetCode::kClosed, self_, "this endpoint crashed");
    if (!inbox_.empty()) {
      Delivery d = std::move(inbox_.front());
      inbox_.pop_front();
      if (d.peer_lost) return NetStatus::error(NetCode::kPeerLost, d.from, "simulated crash detected");
      bytes_recv_total_ += d.bytes.size();
      message->peer = d.from;
      message->bytes = std::move(d.bytes);
      return NetStatus::ok();
    }
    const int64_t now = network_.now_us();
    if (now >= deadline_us) return NetStatus::error(NetCode::kTimeout, kNoPeer, "no message before the deadline");
    const std::optional<int64_t> next = network_.next_event_us();
    network_.advance_to(next && *next < deadline_us ? *next : deadline_us);
  }
}

// ---- SimNetwork -----------------------------------------------------------------------------

SimNetwork::SimNetwork(const SimNetworkConfig& config)
    : config_(config), rng_(config.seed), up_(config.peers, true), link_free_us_(config.peers * config.peers, 0) {
  MERIDIAN_ASSERT(config.peers >= 1, "a network needs at least one peer");
  MERIDIAN_ASSERT(config.latency_us >= 0 && config.jitter_us >= 0, "latency {} us, jitter {} us", config.latency_us,
                  config.jitter_us);
  for (PeerId p = 0; p < config.peers; ++p) {
    endpoints_.push_back(std::unique_ptr<SimTransport>(new SimTransport(*this, p)));
    endpoints_.back()->known_lost_.assign(config.peers, false);
  }
}

SimTransport& SimNetwork::endpoint(PeerId peer) {
  MERIDIAN_ASSERT(peer < endpoints_.size(), "no endpoint {} (of {})", peer, endpoints_.size());
  return *endpoints_[peer];
}

NetStatus SimNetwork::enqueue(PeerId from, PeerId to, std::vector<std::byte> bytes) {
  if (!up_[to]) {  // lost in the network; the sender learns of it from the loss notice
    ++messages_dropped_;
    return NetStatus::ok();
  }
  // The link sends one message after the other at its bandwidth; then the message travels
  // for latency + jitter. Jitter can reorder messages on one link, as several streams would.
  const int64_t now = clock_.now_us();
  int64_t& link_free = link_free_us_[from * config_.peers + to];
  const int64_t start = std::max(now, link_free);
  const int64_t transmit_us = config_.bandwidth_bytes_per_us > 0
                                  ? static_cast<int64_t>(std::ceil(bytes.size() / config_.bandwidth_bytes_per_us))
                                  : 0;
  link_free = start + transmit_us;
  const int64_t jitter = config_.jitter_us > 0 ? static_cast<int64_t>(rng_.below(config_.jitter_us + 1)) : 0;
  const int64_t at = link_free + config_.latency_us + jitter;
  in_flight_.emplace(EventKey{at, next_seq_++}, Event{from, to, false, std::move(bytes)});
  return NetStatus::ok();
}

void SimNetwork::deliver_due() {
  const int64_t now = clock_.now_us();
  while (!in_flight_.empty() && in_flight_.begin()->first.first <= now) {
    Event e = std::move(in_flight_.begin()->second);
    in_flight_.erase(in_flight_.begin());
    if (!up_[e.to]) {
      ++messages_dropped_;
      continue;
    }
    SimTransport& dst = *endpoints_[e.to];
    if (e.peer_lost) dst.known_lost_[e.from] = true;
    dst.inbox_.push_back(SimTransport::Delivery{e.from, e.peer_lost, std::move(e.bytes)});
    ++messages_delivered_;
  }
}

std::optional<int64_t> SimNetwork::next_event_us() const {
  if (in_flight_.empty()) return std::nullopt;
  return in_flight_.begin()->first.first;
}

void SimNetwork::advance_to(int64_t t_us) {
  clock_.advance_to(t_us);
  deliver_due();
}

void SimNetwork::crash(PeerId peer, int64_t detect_after_us) {
  MERIDIAN_ASSERT(peer < endpoints_.size(), "no endpoint {} (of {})", peer, endpoints_.size());
  if (!up_[peer]) return;
  up_[peer] = false;
  for (auto it = in_flight_.begin(); it != in_flight_.end();) {
    if (it->second.from == peer || it->second.to == peer) {
      ++messages_dropped_;
      it = in_flight_.erase(it);
    } else {
      ++it;
    }
  }
  messages_dropped_ += endpoints_[peer]->inbox_.size();
  endpoints_[peer]->inbox_.clear();
  const int64_t at = clock_.now_us() + detect_after_us;
  for (PeerId q = 0; q < endpoints_.size(); ++q) {
    if (q == peer || !up_[q]) continue;
    in_flight_.emplace(EventKey{at, next_seq_++}, Event{peer, q, true, {}});
  }
}

}  // namespace meridian::net
