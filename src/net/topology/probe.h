// Pairwise throughput measurement over the Transport, bounded in bytes and in time, for the
// ring order of ring_order.h.
//
// The protocol, run by every member of the view with the same pair list and options:
//   Schedule. The pairs to measure (only the new ones after a membership change, see
//   BandwidthCache::missing_pairs) are packed greedily into rounds of disjoint pairs
//   (schedule_rounds(), pure), so that a link is measured while its two ends do nothing
//   else; pairs in one round run in parallel.
//   Measure. In a round, for the pair (a, b) with a listed first: b sends P2P_ProbeReady; a
//   then streams chunks of chunk_bytes to b with at most `window` unacknowledged, b acks each
//   one; a stops after probe_bytes or max_direction_ms, whichever comes first, and sends
//   P2P_ProbeEnd. Then the same from b to a. The sender's estimate is the bytes acknowledged
//   between the first and the last ack divided by the time between them (so the latency of
//   the first chunk does not count); with a single ack, bytes / (ack time - send time).
//   Exchange. A member that finished its rounds sends its outgoing measurements to every
//   other member (P2P_ProbeResult), and is done when it holds everybody's: every member ends
//   with the same list, so every member computes the same ring.
// Cost: per pair 2 x min(probe_bytes, rate x max_direction_ms) bytes plus a 32-byte ack per
// chunk; time ~ rounds x 2 x (max_direction_ms or probe_bytes / rate). A full measurement of N
// members is about N rounds; after a join only the joiner's N-1 pairs are measured.
//
// Failure: like the other operations: the loss of a member (kPeerLost), a malformed frame
// (kProtocol) or the deadline (kTimeout) end the probe with a typed NetStatus; measurements
// taken so far are kept in measurements() for the caller to cache if it wants them.
// Threading: driven by one thread at a time.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "net/transport/transport.h"

namespace meridian::net {

struct ProbeOptions {
  size_t probe_bytes = 16u << 20;  // per direction per pair, at most
  size_t chunk_bytes = 256u << 10;
  size_t window = 8;               // unacknowledged chunks per direction
  int64_t max_direction_ms = 1000; // per direction per pair, at most (then it stops early)
  int64_t timeout_ms = 120000;     // the whole probe
  uint64_t probe_id = 0;           // unique per probe; every member must use the same one
};

struct LinkMeasurement {
  PeerId from = kNoPeer;
  PeerId to = kNoPeer;
  double bits_per_s = 0;
  uint64_t bytes = 0;     // acknowledged bytes
  int64_t elapsed_us = 0; // first send to last ack
};

// Pure: rounds of disjoint pairs, greedily in the given order (pairs index the view).
std::vector<std::vector<std::pair<size_t, size_t>>> schedule_rounds(const std::vector<std::pair<size_t, size_t>>& pairs);

// Wire: 32-byte header { u32 magic "MTP1", u16 version, u8 kind, u8 reserved, u64 probe_id,
// u32 round, u32 seq, u32 total, u32 length } then `length` payload bytes (chunks; results as
// 32-byte entries { u32 from, u32 to, f64 bits_per_s, u64 bytes, i64 elapsed_us }).
inline constexpr uint32_t kProbeMagic = 0x3150544du;  // "MTP1" little-endian
inline constexpr uint16_t kProbeVersion = 1;
inline constexpr size_t kProbeHeaderBytes = 32;
std::optional<uint64_t> probe_frame_id(std::span<const std::byte> frame);

class BandwidthProbe {
 public:
  // pairs: (i, j) indices into view, i != j, each unordered pair at most once.
  BandwidthProbe(Transport& transport, std::vector<PeerId> view, std::vector<std::pair<size_t, size_t>> pairs,
                 const ProbeOptions& options);

  void start();
  enum class Disposition { kConsumed, kForeign };
  Disposition on_recv(const NetStatus& status, Message& message);
  void check_deadline();

  bool done() const { return done_; }
  const NetStatus& status() const { return status_; }
  int64_t deadline_us() const { return deadline_us_; }
  // Every measured directed link once done (ok); this member's own so far otherwise.
  const std::vector<LinkMeasurement>& measurements() const { return measurements_; }
  uint64_t bytes_sent_total() const { return bytes_sent_total_; }

 private:
  enum class Role { kIdle, kWaitReady, kSending, kReceiving, kDoneRound };

  void enter_round();
  void begin_sending();
  void pump();             // sends chunks while the window, byte and time limits allow
  void finish_direction(); // after this member's End went out or its partner's End came in
  void on_frame(PeerId peer, std::vector<std::byte>& frame);
  void handle(PeerId peer, uint8_t kind, uint32_t round, uint32_t seq, uint32_t total, std::span<const std::byte> payload);
  void send_results();
  void maybe_done();
  bool send(PeerId peer, uint8_t kind, uint32_t round, uint32_t seq, uint32_t total, std::span<const std::byte> payload);
  void fail(NetStatus status);
  int32_t rank_of(PeerId peer) const;

  Transport& transport_;
  std::vector<PeerId> view_;
  ProbeOptions options_;
  size_t rank_ = 0;
  std::vector<std::vector<std::pair<size_t, size_t>>> rounds_;

  // The current round.
  size_t round_ = 0;
  bool rounds_done_ = false;
  PeerId partner_ = kNoPeer;
  bool first_in_pair_ = false;  // sends first
  bool sent_direction_ = false;
  bool received_direction_ = false;
  Role role_ = Role::kIdle;
  // Sending side of the current direction.
  uint32_t chunks_sent_ = 0;
  uint32_t chunks_acked_ = 0;
  uint64_t bytes_acked_ = 0;
  uint64_t bytes_first_ack_ = 0;
  int64_t send_start_us_ = 0;
  int64_t first_ack_us_ = 0;
  int64_t last_ack_us_ = 0;
  bool send_stopped_ = false;
  // Receiving side.
  uint32_t chunks_received_ = 0;
  std::optional<uint32_t> chunks_announced_;
  std::vector<Message> stash_;  // frames of later rounds (bounded by the schedule)

  std::vector<LinkMeasurement> measurements_;
  std::vector<bool> results_from_;  // [rank]
  size_t results_missing_ = 0;
  bool results_sent_ = false;

  uint64_t bytes_sent_total_ = 0;
  int64_t deadline_us_ = 0;
  bool started_ = false;
  bool done_ = false;
  NetStatus status_;
};

// Runs a probe on every member of a simulated network (one thread, simulated time) and returns
// each member's probe outcome; the harness for tests.
struct SimProbeResult {
  std::vector<NetStatus> status;
  std::vector<std::vector<LinkMeasurement>> measurements;
  std::vector<uint64_t> bytes_sent;
};
class SimNetwork;
SimProbeResult run_probe_sim(SimNetwork& network, const std::vector<PeerId>& view,
                             const std::vector<std::pair<size_t, size_t>>& pairs, const ProbeOptions& options);

// Blocking driver for one member (TCP). Frames of other protocols are dropped.
NetStatus run_probe(Transport& transport, const std::vector<PeerId>& view,
                    const std::vector<std::pair<size_t, size_t>>& pairs, const ProbeOptions& options,
                    std::vector<LinkMeasurement>* measurements);

}  // namespace meridian::net
