// Shared-state sync: peers whose buffers differ from the elected version (new or stale) pull
// exactly the differing buffers from the peers that hold the elected version, striped over
// several sources and streams, verify every buffer's XXH3-128 hash, and only then commit.
//
// How it is called (the Communicator of src/net/communicator.* drives it; tests use the
// simulated network): every member of the view runs the same sync with the same arguments:
//   1. every member reports state.report(self) to the coordinator;
//   2. the coordinator runs elect() (shared_state.h) and sends every member the ElectedHashes;
//   3. every member calls StateSyncRunner::run(view, state, elected, options) (or drives a
//      StateSync itself) with the same view, elected hashes, options and a fresh sync_id.
// Up-to-date members serve and return when their share is served; out-of-date members
// download, verify, commit and return. The call is collective: a member that serves nothing
// and lacks nothing returns at once.
//
// The algorithm (plan_sync() is the pure part every member computes identically):
//   Plan. For every member d (rank r in the view) that does not keep its own (elected.keep_own)
//   and every elected buffer b that d does not hold (d is not in b.holders), b is cut into
//   chunks of chunk_bytes; chunk c is assigned to source s = H[(c + r) mod |H|], H = the
//   holders of b that are in the view. So a buffer is striped over all its holders, and
//   different downloaders start on different sources.
//   Pull. The downloader keeps at most window_per_source requests outstanding per source
//   (P2P_SyncRequest{buffer, offset, length}); each answer (P2P_SyncChunk) is copied into a
//   staging buffer and the next request goes out. TCP spreads the outstanding chunks over the
//   pair's streams, so one downloader fills several streams of several sources at once.
//   Serve. A source answers each valid request from its own state, and is done once it has
//   served the number of chunks the plan gives it.
//   Verify and commit. When a buffer's chunks are all in, its staging copy is hashed; a hash
//   that differs from the elected one fails the sync (kHashMismatch) before anything is
//   written. When every buffer is verified and this member's share is served, commit moves the staged buffers into the state,
//   drops buffers that are not elected and sets the elected revision: the only write to the
//   caller's state, and it does not fail.
// Cost: a member missing M bytes receives M payload bytes plus a 40-byte header per chunk
// and sends one 40-byte request per chunk; a source sends what the plan gives it, about
// M / |H| per downloader. Time ~ latency x (1 + chunks / (window x |H|)) + M / (aggregate
// bandwidth of the sources into the downloader). Memory: the staged buffers (the missing
// bytes) on the downloader; window_per_source chunks per downloader queued on a source.
//
// Failure: the peer loss (kPeerLost) of a view member, an abort from one (kAborted), a
// malformed or unexpected frame (kProtocol), a wrong hash (kHashMismatch) or the deadline
// (kTimeout) ends the sync with that typed error and the state exactly as before the call
// (nothing is committed before every buffer verified). A member that fails sends
// P2P_SyncAbort to every other member (best effort) so they stop waiting at once instead of
// at the deadline. Sources may already have returned ok when a downloader fails late (e.g. a
// hash mismatch after the last chunk); the next sync re-elects and retries under the new
// view and a new sync_id. A membership change while a sync runs is the Communicator's to
// handle: it appears here as a peer loss or an abort.
//
// Every member must use the same view, elected hashes and options (chunk_bytes, sync_id).
// Threading: a StateSync is driven by one thread at a time (a plain state machine like
// AllReduce); the state must not change while a sync runs.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "net/state_sync/shared_state.h"
#include "net/transport/transport.h"

namespace meridian::net {

struct StateSyncOptions {
  size_t chunk_bytes = 1u << 20;  // payload per P2P_SyncChunk; + 40-byte header <= max_message_bytes
  size_t window_per_source = 8;   // outstanding requests per (downloader, source)
  int64_t timeout_ms = 120000;    // the whole sync, from start()
  uint64_t sync_id = 0;           // unique per sync; every member must use the same one
};

enum class SyncCode : uint8_t {
  kOk = 0,
  kTimeout,          // the deadline passed
  kPeerLost,         // a view member was lost (peer() says which)
  kAborted,          // a view member failed and told us (peer() says which)
  kHashMismatch,     // a downloaded buffer's hash differs from the elected one
  kProtocol,         // a malformed or unexpected frame
  kNoSource,         // an elected buffer has no holder in the view: the sync cannot run
  kClosed,           // this endpoint was closed
  kMessageTooLarge,  // chunk_bytes + header exceeds the transport's max_message_bytes
};
const char* sync_code_name(SyncCode code);

class SyncStatus {
 public:
  SyncStatus() = default;  // ok
  static SyncStatus error(SyncCode code, PeerId peer, std::string detail) {
    SyncStatus s;
    s.code_ = code;
    s.peer_ = peer;
    s.detail_ = std::move(detail);
    return s;
  }
  bool is_ok() const { return code_ == SyncCode::kOk; }
  SyncCode code() const { return code_; }
  PeerId peer() const { return peer_; }
  const std::string& detail() const { return detail_; }
  std::string to_string() const;  // "hash_mismatch (peer 2): buffer 'w' ..."

 private:
  SyncCode code_ = SyncCode::kOk;
  PeerId peer_ = kNoPeer;
  std::string detail_;
};

struct SyncStats {
  uint64_t bytes_downloaded = 0;    // payload received into staging (verified or not)
  uint64_t bytes_served = 0;        // payload sent to downloaders
  uint64_t bytes_sent_total = 0;    // frames, headers included
  uint64_t bytes_recv_total = 0;
  uint64_t chunks_downloaded = 0;
  uint64_t chunks_served = 0;
  uint64_t buffers_downloaded = 0;  // verified and committed
  int64_t elapsed_us = 0;           // start() to done, on the transport's clock

  double seconds() const { return elapsed_us * 1e-6; }
  // Download throughput in Gbit/s of payload (0 before any time passed).
  double download_gbit_per_s() const { return elapsed_us > 0 ? bytes_downloaded * 8.0 / (elapsed_us * 1e3) : 0.0; }
};

// One chunk of the plan: downloader pulls [offset, offset + length) of elected buffer
// `buffer` from `source`.
struct SyncChunk {
  uint32_t buffer = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
  PeerId source = kNoPeer;
};

struct SyncPlan {
  std::vector<std::vector<SyncChunk>> downloads;  // [rank in view]: this member's chunks, in order
  std::vector<std::vector<size_t>> missing;       // [rank]: elected buffer indices it lacks
  std::vector<uint64_t> chunks_to_serve;          // [rank]: chunks the plan assigns it as source
  std::optional<size_t> unsourced_buffer;         // an elected buffer without a holder in the view
};

// Pure: the plan described above. chunk_bytes >= 1.
SyncPlan plan_sync(const std::vector<PeerId>& view, const ElectedHashes& elected, size_t chunk_bytes);

// Wire frames, little-endian: a 40-byte header
//   { u32 magic "MSS1", u16 version, u8 kind, u8 reserved, u64 sync_id, u32 buffer,
//     u32 reserved, u64 offset, u32 length, u32 reserved }
// then, for P2P_SyncChunk only, `length` bytes. Kinds: 1 request, 2 chunk, 3 abort.
inline constexpr uint32_t kStateSyncMagic = 0x3153534du;  // "MSS1" little-endian
inline constexpr uint16_t kStateSyncVersion = 1;
inline constexpr size_t kStateSyncHeaderBytes = 40;
// The sync_id of a state-sync frame, or nullopt if the bytes are not one.
std::optional<uint64_t> state_sync_frame_id(std::span<const std::byte> frame);

class StateSync {
 public:
  // view: the members in rank order, transport.self() among them. `state` and `elected` must
  // outlive the StateSync.
  StateSync(Transport& transport, std::vector<PeerId> view, SharedState& state, const ElectedHashes& elected,
            const StateSyncOptions& options);

  // Sends the first requests; finishes at once for a member with nothing to do.
  void start();

  enum class Disposition {
    kConsumed,  // belonged to this sync (or a loss notice, an old sync's frame, ...)
    kForeign,   // another protocol's frame or a later sync's: untouched, keep it for later
  };
  Disposition on_recv(const NetStatus& status, Message& message);
  void check_deadline();

  bool done() const { return done_; }
  const SyncStatus& status() const { return status_; }  // valid once done()
  int64_t deadline_us() const { return deadline_us_; }
  const SyncStats& stats() const { return stats_; }

 private:
  struct Staged {
    size_t buffer = 0;                  // elected index
    std::vector<std::byte> bytes;       // the staging copy
    std::vector<bool> chunk_received;   // [chunk]
    size_t chunks_left = 0;
    bool verified = false;
  };

  void on_frame(PeerId peer, std::vector<std::byte>& frame);
  void on_request(PeerId peer, uint32_t buffer, uint64_t offset, uint32_t length);
  void on_chunk(PeerId peer, uint32_t buffer, uint64_t offset, uint32_t length, std::span<const std::byte> payload);
  void issue_requests(size_t source_rank);
  bool send_frame(PeerId peer, std::vector<std::byte> frame);
  void maybe_finish();
  void commit();
  void fail(SyncStatus status);
  int32_t rank_of(PeerId peer) const;

  Transport& transport_;
  std::vector<PeerId> view_;
  SharedState& state_;
  const ElectedHashes& elected_;
  StateSyncOptions options_;
  size_t rank_ = 0;
  SyncPlan plan_;

  // Downloader: staging per missing buffer, and per source (by rank) the queue of planned
  // chunks not yet requested and the number outstanding.
  std::vector<Staged> staged_;
  std::vector<int64_t> staged_of_buffer_;            // elected index -> index in staged_, or -1
  std::vector<std::vector<SyncChunk>> queue_;        // [source rank]
  std::vector<size_t> queue_next_;                   // [source rank]
  std::vector<size_t> outstanding_;                  // [source rank]
  size_t buffers_unverified_ = 0;
  // Source: chunks served so far against the plan's count.
  uint64_t chunks_served_ = 0;

  int64_t start_us_ = 0;
  int64_t deadline_us_ = 0;
  bool started_ = false;
  bool done_ = false;
  SyncStatus status_;
  SyncStats stats_;
};

// Blocking driver for one member on a transport whose recv waits (TCP, or a lone simulated
// endpoint). Frames of a later sync that arrive early are kept (bounded) and replayed into the
// next run; frames of other protocols that arrive during a sync are dropped and counted (the
// Communicator demultiplexes by magic before it gets here).
class StateSyncRunner {
 public:
  explicit StateSyncRunner(Transport& transport) : transport_(transport) {}
  SyncStatus run(const std::vector<PeerId>& view, SharedState& state, const ElectedHashes& elected,
                 const StateSyncOptions& options, SyncStats* stats = nullptr);
  uint64_t foreign_frames_dropped() const { return foreign_frames_dropped_; }

 private:
  static constexpr size_t kMaxEarlyFrames = 1u << 12;
  Transport& transport_;
  std::vector<Message> early_;
  uint64_t foreign_frames_dropped_ = 0;
};

}  // namespace meridian::net
