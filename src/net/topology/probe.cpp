// The bandwidth probe state machine; the protocol and its cost are in probe.h.
#include "net/topology/probe.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <memory>
#include <string>

#include "core/assert.h"
#include "net/transport/sim_transport.h"

namespace meridian::net {

namespace {

static_assert(std::endian::native == std::endian::little, "the wire format is little-endian");

constexpr uint8_t kKindReady = 1;
constexpr uint8_t kKindChunk = 2;
constexpr uint8_t kKindAck = 3;
constexpr uint8_t kKindEnd = 4;
constexpr uint8_t kKindResult = 5;

struct ProbeHeader {
  uint32_t magic = kProbeMagic;
  uint16_t version = kProbeVersion;
  uint8_t kind = 0;
  uint8_t reserved = 0;
  uint64_t probe_id = 0;
  uint32_t round = 0;
  uint32_t seq = 0;
  uint32_t total = 0;
  uint32_t length = 0;
};
static_assert(sizeof(ProbeHeader) == kProbeHeaderBytes, "probe header must be 32 bytes, no padding");

struct ResultEntry {
  uint32_t from = 0;
  uint32_t to = 0;
  double bits_per_s = 0;
  uint64_t bytes = 0;
  int64_t elapsed_us = 0;
};
static_assert(sizeof(ResultEntry) == 32, "result entry must be 32 bytes");

}  // namespace

std::optional<uint64_t> probe_frame_id(std::span<const std::byte> frame) {
  if (frame.size() < kProbeHeaderBytes) return std::nullopt;
  ProbeHeader h;
  std::memcpy(&h, frame.data(), sizeof(h));
  if (h.magic != kProbeMagic) return std::nullopt;
  return h.probe_id;
}

std::vector<std::vector<std::pair<size_t, size_t>>> schedule_rounds(const std::vector<std::pair<size_t, size_t>>& pairs) {
  std::vector<std::vector<std::pair<size_t, size_t>>> rounds;
  std::vector<std::vector<size_t>> busy;  // [round]: members used
  for (const auto& p : pairs) {
    MERIDIAN_ASSERT(p.first != p.second, "pair ({}, {}) measures a member against itself", p.first, p.second);
    size_t r = 0;
    for (; r < rounds.size(); ++r) {
      const auto& b = busy[r];
      if (std::find(b.begin(), b.end(), p.first) == b.end() && std::find(b.begin(), b.end(), p.second) == b.end()) break;
    }
    if (r == rounds.size()) {
      rounds.emplace_back();
      busy.emplace_back();
    }
    rounds[r].push_back(p);
    busy[r].push_back(p.first);
    busy[r].push_back(p.second);
  }
  return rounds;
}

BandwidthProbe::BandwidthProbe(Transport& transport, std::vector<PeerId> view,
                               std::vector<std::pair<size_t, size_t>> pairs, const ProbeOptions& options)
    : transport_(transport), view_(std::move(view)), options_(options) {
  MERIDIAN_ASSERT(options_.chunk_bytes >= 1 && options_.probe_bytes >= 1 && options_.window >= 1,
                  "probe sizes must be positive");
  const int32_t r = rank_of(transport_.self());
  MERIDIAN_ASSERT(r >= 0, "peer {} is not in the view", transport_.self());
  rank_ = static_cast<size_t>(r);
  for (const auto& p : pairs) {
    MERIDIAN_ASSERT(p.first < view_.size() && p.second < view_.size(), "pair ({}, {}) outside a view of {}", p.first,
                    p.second, view_.size());
  }
  rounds_ = schedule_rounds(pairs);
  results_from_.assign(view_.size(), false);
  results_from_[rank_] = true;
  results_missing_ = view_.size() - 1;
}

int32_t BandwidthProbe::rank_of(PeerId peer) const {
  for (size_t r = 0; r < view_.size(); ++r) {
    if (view_[r] == peer) return static_cast<int32_t>(r);
  }
  return -1;
}

void BandwidthProbe::start() {
  MERIDIAN_ASSERT(!started_, "probe started twice");
  started_ = true;
  deadline_us_ = transport_.clock().now_us() + options_.timeout_ms * 1000;
  if (options_.chunk_bytes + kProbeHeaderBytes > transport_.max_message_bytes()) {
    fail(NetStatus::error(NetCode::kMessageTooLarge, kNoPeer, "probe chunk_bytes + header > transport max"));
    return;
  }
  enter_round();
}

bool BandwidthProbe::send(PeerId peer, uint8_t kind, uint32_t round, uint32_t seq, uint32_t total,
                          std::span<const std::byte> payload) {
  ProbeHeader h;
  h.kind = kind;
  h.probe_id = options_.probe_id;
  h.round = round;
  h.seq = seq;
  h.total = total;
  h.length = static_cast<uint32_t>(payload.size());
  std::vector<std::byte> frame(sizeof(h) + payload.size());
  std::memcpy(frame.data(), &h, sizeof(h));
  if (!payload.empty()) std::memcpy(frame.data() + sizeof(h), payload.data(), payload.size());
  bytes_sent_total_ += frame.size();
  const NetStatus st = transport_.send(peer, std::move(frame));
  if (st.is_ok()) return true;
  fail(st);
  return false;
}

void BandwidthProbe::enter_round() {
  while (!done_ && round_ < rounds_.size()) {
    partner_ = kNoPeer;
    for (const auto& [a, b] : rounds_[round_]) {
      if (a == rank_ || b == rank_) {
        first_in_pair_ = a == rank_;
        partner_ = view_[first_in_pair_ ? b : a];
      }
    }
    if (partner_ == kNoPeer) {
      ++round_;
      continue;
    }
    sent_direction_ = received_direction_ = false;
    chunks_received_ = 0;
    chunks_announced_.reset();
    if (first_in_pair_) {
      role_ = Role::kWaitReady;
    } else {
      role_ = Role::kReceiving;
      if (!send(partner_, kKindReady, static_cast<uint32_t>(round_), 0, 0, {})) return;
    }
    // Replay what arrived early for this round.
    std::vector<Message> stash;
    stash.swap(stash_);
    const size_t this_round = round_;
    for (Message& m : stash) {
      if (done_ || round_ != this_round) {
        stash_.push_back(std::move(m));
      } else {
        on_frame(m.peer, m.bytes);
      }
    }
    return;
  }
  if (done_) return;
  rounds_done_ = true;
  role_ = Role::kIdle;
  send_results();
  maybe_done();
}

void BandwidthProbe::begin_sending() {
  role_ = Role::kSending;
  chunks_sent_ = chunks_acked_ = 0;
  bytes_acked_ = bytes_first_ack_ = 0;
  send_start_us_ = transport_.clock().now_us();
  first_ack_us_ = last_ack_us_ = 0;
  send_stopped_ = false;
  pump();
}

void BandwidthProbe::pump() {
  const int64_t now = transport_.clock().now_us();
  while (!send_stopped_ && chunks_sent_ - chunks_acked_ < options_.window) {
    const uint64_t sent_bytes = static_cast<uint64_t>(chunks_sent_) * options_.chunk_bytes;
    if (sent_bytes >= options_.probe_bytes || now - send_start_us_ >= options_.max_direction_ms * 1000) {
      send_stopped_ = true;
      break;
    }
    const size_t length = std::min<uint64_t>(options_.chunk_bytes, options_.probe_bytes - sent_bytes);
    std::vector<std::byte> payload(length);  // zeros: content does not matter, size does
    if (!send(partner_, kKindChunk, static_cast<uint32_t>(round_), chunks_sent_, 0, payload)) return;
    ++chunks_sent_;
  }
  if (!send_stopped_ || chunks_acked_ != chunks_sent_) return;
  // Direction finished: record the estimate, announce the end.
  LinkMeasurement m;
  m.from = transport_.self();
  m.to = partner_;
  m.bytes = bytes_acked_;
  m.elapsed_us = last_ack_us_ - send_start_us_;
  if (chunks_acked_ >= 2 && last_ack_us_ > first_ack_us_) {
    m.bits_per_s = static_cast<double>(bytes_acked_ - bytes_first_ack_) * 8e6 / static_cast<double>(last_ack_us_ - first_ack_us_);
  } else {
    m.bits_per_s = static_cast<double>(bytes_acked_) * 8e6 / static_cast<double>(std::max<int64_t>(1, m.elapsed_us));
  }
  measurements_.push_back(m);
  sent_direction_ = true;
  if (!send(partner_, kKindEnd, static_cast<uint32_t>(round_), 0, chunks_sent_, {})) return;
  finish_direction();
}

void BandwidthProbe::finish_direction() {
  if (sent_direction_ && received_direction_) {
    ++round_;
    enter_round();
  } else if (sent_direction_) {
    role_ = Role::kReceiving;  // the partner sends next
  } else {
    begin_sending();  // received first: now this member sends
  }
}

BandwidthProbe::Disposition BandwidthProbe::on_recv(const NetStatus& status, Message& message) {
  if (done_) return Disposition::kConsumed;
  if (!status.is_ok()) {
    if (status.code() == NetCode::kTimeout) {
      check_deadline();
    } else if (status.code() != NetCode::kPeerLost || (status.peer() != transport_.self() && rank_of(status.peer()) >= 0)) {
      fail(status);
    }
    return Disposition::kConsumed;
  }
  const std::optional<uint64_t> id = probe_frame_id(message.bytes);
  if (!id || *id > options_.probe_id) return Disposition::kForeign;
  if (*id < options_.probe_id) return Disposition::kConsumed;
  on_frame(message.peer, message.bytes);
  return Disposition::kConsumed;
}

void BandwidthProbe::on_frame(PeerId peer, std::vector<std::byte>& frame) {
  const int32_t peer_rank = rank_of(peer);
  if (peer_rank < 0) return;
  ProbeHeader h;
  std::memcpy(&h, frame.data(), sizeof(h));
  if (h.version != kProbeVersion || frame.size() != kProbeHeaderBytes + h.length) {
    fail(NetStatus::error(NetCode::kProtocol, peer, "malformed probe frame (version " + std::to_string(h.version) + ")"));
    return;
  }
  const auto payload = std::span<const std::byte>(frame).subspan(kProbeHeaderBytes);
  if (h.kind == kKindResult) {
    if (h.length % sizeof(ResultEntry) != 0 || results_from_[static_cast<size_t>(peer_rank)]) {
      fail(NetStatus::error(NetCode::kProtocol, peer, "malformed or duplicate probe result"));
      return;
    }
    results_from_[static_cast<size_t>(peer_rank)] = true;
    --results_missing_;
    for (size_t off = 0; off < payload.size(); off += sizeof(ResultEntry)) {
      ResultEntry e;
      std::memcpy(&e, payload.data() + off, sizeof(e));
      measurements_.push_back(LinkMeasurement{e.from, e.to, e.bits_per_s, e.bytes, e.elapsed_us});
    }
    maybe_done();
    return;
  }
  if (rounds_done_ || h.round > round_) {
    if (h.round >= rounds_.size()) {
      fail(NetStatus::error(NetCode::kProtocol, peer, "probe frame for round " + std::to_string(h.round) + " of " +
                                                       std::to_string(rounds_.size())));
      return;
    }
    Message m;
    m.peer = peer;
    m.bytes = std::move(frame);
    stash_.push_back(std::move(m));
    return;
  }
  if (h.round < round_ || peer != partner_) {
    fail(NetStatus::error(NetCode::kProtocol, peer, "probe frame from outside the current pair"));
    return;
  }
  handle(peer, h.kind, h.round, h.seq, h.total, payload);
}

void BandwidthProbe::handle(PeerId peer, uint8_t kind, uint32_t round, uint32_t seq, uint32_t total,
                            std::span<const std::byte> payload) {
  auto unexpected = [&]() {
    fail(NetStatus::error(NetCode::kProtocol, peer, "unexpected probe frame kind " + std::to_string(kind)));
  };
  switch (kind) {
    case kKindReady:
      if (role_ != Role::kWaitReady) return unexpected();
      begin_sending();
      return;
    case kKindChunk: {
      if (role_ != Role::kReceiving) return unexpected();
      ++chunks_received_;
      if (!send(peer, kKindAck, round, seq, static_cast<uint32_t>(payload.size()), {})) return;
      break;
    }
    case kKindAck: {
      if (role_ != Role::kSending || chunks_acked_ >= chunks_sent_) return unexpected();
      const int64_t now = transport_.clock().now_us();
      if (chunks_acked_ == 0) {
        first_ack_us_ = now;
        bytes_first_ack_ = total;
      }
      last_ack_us_ = now;
      ++chunks_acked_;
      bytes_acked_ += total;
      pump();
      return;
    }
    case kKindEnd:
      if (role_ != Role::kReceiving) return unexpected();
      chunks_announced_ = total;
      break;
    default:
      return unexpected();
  }
  if (chunks_announced_ && chunks_received_ == *chunks_announced_) {
    received_direction_ = true;
    finish_direction();
  }
}

void BandwidthProbe::send_results() {
  std::vector<std::byte> payload;
  for (const LinkMeasurement& m : measurements_) {
    if (m.from != transport_.self()) continue;
    const ResultEntry e{m.from, m.to, m.bits_per_s, m.bytes, m.elapsed_us};
    const size_t at = payload.size();
    payload.resize(at + sizeof(e));
    std::memcpy(payload.data() + at, &e, sizeof(e));
  }
  results_sent_ = true;
  for (PeerId p : view_) {
    if (p != transport_.self() && !send(p, kKindResult, 0, 0, 0, payload)) return;
  }
}

void BandwidthProbe::maybe_done() {
  if (done_ || !rounds_done_ || results_missing_ != 0) return;
  std::sort(measurements_.begin(), measurements_.end(), [](const LinkMeasurement& a, const LinkMeasurement& b) {
    return a.from != b.from ? a.from < b.from : a.to < b.to;
  });
  done_ = true;
  status_ = NetStatus::ok();
}

void BandwidthProbe::check_deadline() {
  if (done_ || !started_) return;
  if (transport_.clock().now_us() >= deadline_us_) {
    fail(NetStatus::error(NetCode::kTimeout, partner_, "probe not done after " + std::to_string(options_.timeout_ms) + " ms"));
  }
}

void BandwidthProbe::fail(NetStatus status) {
  if (done_) return;
  done_ = true;
  status_ = std::move(status);
}

// ---- Drivers ------------------------------------------------------------------------------------

SimProbeResult run_probe_sim(SimNetwork& network, const std::vector<PeerId>& view,
                             const std::vector<std::pair<size_t, size_t>>& pairs, const ProbeOptions& options) {
  const size_t world = view.size();
  std::vector<std::unique_ptr<BandwidthProbe>> ops;
  for (PeerId p : view) ops.push_back(std::make_unique<BandwidthProbe>(network.endpoint(p), view, pairs, options));
  for (auto& op : ops) op->start();
  for (;;) {
    bool progress = false;
    for (size_t r = 0; r < world; ++r) {
      while (!ops[r]->done()) {
        Message m;
        const NetStatus st = network.endpoint(view[r]).recv(&m, network.now_us());
        if (st.code() == NetCode::kTimeout) break;
        progress = true;
        ops[r]->on_recv(st, m);
      }
      ops[r]->check_deadline();
    }
    std::optional<int64_t> next = network.next_event_us();
    bool all_done = true;
    for (auto& op : ops) {
      if (op->done()) continue;
      all_done = false;
      next = next ? std::min(*next, op->deadline_us()) : op->deadline_us();
    }
    if (all_done) break;
    if (progress) continue;
    MERIDIAN_ASSERT(next.has_value() && *next > network.now_us(), "probe simulation stuck at {} us", network.now_us());
    network.advance_to(*next);
  }
  SimProbeResult result;
  for (auto& op : ops) {
    result.status.push_back(op->status());
    result.measurements.push_back(op->measurements());
    result.bytes_sent.push_back(op->bytes_sent_total());
  }
  return result;
}

NetStatus run_probe(Transport& transport, const std::vector<PeerId>& view,
                    const std::vector<std::pair<size_t, size_t>>& pairs, const ProbeOptions& options,
                    std::vector<LinkMeasurement>* measurements) {
  BandwidthProbe probe(transport, view, pairs, options);
  probe.start();
  while (!probe.done()) {
    Message m;
    const NetStatus st = transport.recv(&m, probe.deadline_us());
    probe.on_recv(st, m);
    probe.check_deadline();
  }
  if (measurements != nullptr) *measurements = probe.measurements();
  return probe.status();
}

}  // namespace meridian::net
