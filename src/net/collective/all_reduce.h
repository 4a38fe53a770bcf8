// Quantized all-reduce (sum or mean) of an fp32 buffer across the N members of a view, over
// the Transport interface. docs/algorithms.md has the same text with the error analysis.
//
// The algorithm: reduce-scatter, then all-gather, each value rounded at most twice.
//   The buffer of `count` values is cut into N contiguous shards of nearly equal size
//   (shard j = [j*count/N, (j+1)*count/N)); shard j is owned by the member of rank j. Each
//   shard is cut into pieces of at most `chunk_values` values, the unit of pipelining.
//   1. Contribute: every member encodes each piece of every shard with the wire codec and
//      sends it to the shard's owner, piece-major (piece 0 of every shard, then piece 1, ...)
//      starting with the next rank, so that all owners receive work from the start. The owner
//      keeps its own encoded piece instead of sending it: its own values go through the same
//      encode -> decode round trip as everybody else's. A member keeps a bounded window of
//      contribution bytes in flight per owner: the owner's results acknowledge them, and each
//      result received releases the next pieces for that owner. The window is about
//      kWindowTargetUs worth of the rate at which this operation's results have come back
//      (at least window_bytes and two pieces), so it follows the link rate: on a shaped link
//      the bottleneck queue stays short, results are not stuck behind a backlog of
//      contributions, and every owner progresses at the pace of its slowest contributor
//      instead of some flows finishing early and others late (docs/algorithms.md).
//   2. Reduce: as contributions of a piece arrive, the owner folds them into an fp32
//      accumulator strictly in rank order 0, 1, ..., N-1 (a contribution that arrives early
//      waits for the ranks before it), so the sum does not depend on arrival order. For a mean
//      it divides by N once at the end.
//   3. Broadcast: the owner encodes the reduced piece once and sends the same bytes to every
//      other member, keeping a copy.
//   4. Write: as each result arrives, a member saves the values of that piece's range and
//      decodes the result over them (its own contribution to the piece was encoded before:
//      the result acknowledges it). Every member, owner included, decodes the same bytes, so
//      all members end bit-identical. Decoding as results arrive, not all at the end, keeps a
//      pass over the whole buffer off the operation's tail.
// Cost, with S = encoded size of the buffer: each member sends (N-1)/N * S in step 1 and
// (N-1)/N * S in step 3, and receives as much: 2(N-1)/N * S each way (plus a 32-byte header
// per piece and per-piece codec overhead, e.g. int8 block scales). Two message latencies per
// piece on the critical path; pieces pipeline. Memory: the saved values (count fp32) plus the
// owner's fp32 accumulator (count/N values), both kept by AllReduceRunner between operations
// (AllReduceScratch), and contributions waiting for their turn.
// Error: each input value is rounded once by the codec (step 1), the fp32 sum adds at most
// (N-1) fp32 roundings (relative 2^-24 each, negligible next to bf16/fp16/int8), and the
// result is rounded once more (step 3). So the codec error does not grow with N: for int8,
// |error| <= mean_i(step_i)/2 + step_result/2 <= one input quantization step.
//
// Failure: a member that is lost (kPeerLost from the transport, or a send to it failing), a
// malformed frame (kProtocol) or the deadline (kTimeout) ends the operation with that error,
// and the saved values are put back: the buffer is as it was before start(). Retry under the
// new view with a new op_id. Frames of other operations are not consumed (see on_recv).
//
// Threading: an AllReduce is driven by one thread at a time (it is a plain state machine:
// start, then feed it what the transport's recv returns).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "net/quant/codec.h"
#include "net/transport/transport.h"

namespace meridian::net {

enum class ReduceOp : uint8_t { kSum = 0, kMean = 1 };

// Values per piece so that a piece is about `wire_bytes` on the wire with `codec`: small enough
// that a send window of a few pieces keeps a 100 Mbit/s link's queue short, large enough for
// 1 Gbit/s (docs/algorithms.md, "Efficiency on shaped links").
size_t piece_values_for(Codec codec, size_t wire_bytes = 64u << 10);

struct AllReduceOptions {
  Codec codec = Codec::kFp32;
  ReduceOp op = ReduceOp::kMean;
  size_t chunk_values = 1u << 16;  // values per piece; bounds message size and pipelines work
  size_t window_bytes = 256u << 10;  // least contribution bytes in flight per owner (and >= 2 pieces); 0: no window
  int64_t timeout_ms = 60000;      // the whole operation, from start()
  uint64_t op_id = 0;              // unique per operation; every member must use the same one
};

struct AllReduceStats {
  uint64_t bytes_sent_total = 0;    // frames, headers included
  uint64_t bytes_recv_total = 0;
  uint64_t payload_bytes_sent = 0;  // encoded values only
  uint64_t payload_bytes_recv = 0;
  uint64_t messages_sent = 0;
  uint64_t messages_recv = 0;
  int64_t elapsed_us = 0;           // start() to commit or failure, on the transport's clock

  // What this member pushed onto its links, in Gbit/s of frames (0 before any time passed).
  double send_gbit_per_s() const { return elapsed_us > 0 ? bytes_sent_total * 8.0 / (elapsed_us * 1e3) : 0.0; }
};

// Wire frame P2P_Chunk: a 32-byte header, then encoded_size(codec, count) bytes.
inline constexpr uint32_t kAllReduceMagic = 0x3152414du;  // "MAR1" little-endian
inline constexpr uint16_t kAllReduceVersion = 1;
inline constexpr size_t kAllReduceHeaderBytes = 32;
// The send window holds about this long of the acknowledged rate (see AllReduce); at most
// kMaxWindowBytes per owner.
inline constexpr int64_t kWindowTargetUs = 30'000;
inline constexpr uint64_t kMaxWindowBytes = 16u << 20;
// The op_id of an all-reduce frame, or nullopt if the bytes are not one.
std::optional<uint64_t> all_reduce_frame_op_id(std::span<const std::byte> frame);

// The all-reduce's large working memory: the values its results replaced in the caller's buffer
// (fp32 [count]) and the owner's accumulator (fp32 [count/N]). Handed from one operation to the
// next so that their pages are not faulted in again each time; grown, never shrunk.
struct AllReduceScratch {
  std::vector<float> saved;
  std::vector<float> acc;
};

class AllReduce {
 public:
  // members: the view's peers in rank order; transport.self() must be one of them.
  AllReduce(Transport& transport, std::vector<PeerId> members, std::span<float> buffer,
            const AllReduceOptions& options);

  // Encodes and sends this member's contributions. With one member, finishes at once.
  void start();

  enum class Disposition {
    kConsumed,  // the event belonged to this operation (or was a loss notice, timeout, ...)
    kForeign,   // a frame of another operation: untouched, the caller may keep it for later
  };
  // Feeds what transport.recv() returned. Ignored once done().
  Disposition on_recv(const NetStatus& status, Message& message);
  // Fails the operation with kTimeout once the clock has reached deadline_us().
  void check_deadline();

  // The per-owner rate (bytes per microsecond) at which an earlier operation's results came
  // back, to size the send window before this one's first results (AllReduceRunner passes it
  // on). Call before start(). rate_hint() after done(): this operation's own, or 0 when it
  // moved too few bytes to say (a barrier, a small buffer).
  void set_rate_hint(double bytes_per_us) { rate_hint_ = bytes_per_us; }
  // Working memory from an earlier operation (call before start()), and back once done():
  // after a success its saved[0, count) holds the buffer's values from before start().
  void adopt_scratch(AllReduceScratch scratch) { scratch_ = std::move(scratch); }
  AllReduceScratch release_scratch() { return std::move(scratch_); }
  double rate_hint() const;

  bool done() const { return done_; }
  const NetStatus& status() const { return status_; }  // valid once done()
  int64_t deadline_us() const { return deadline_us_; }
  const AllReduceStats& stats() const { return stats_; }
  size_t rank() const { return rank_; }

 private:
  struct Range {
    size_t begin = 0;
    size_t count = 0;
  };
  size_t shard_begin(size_t shard) const { return shard * count_ / world_; }
  size_t piece_count(size_t shard) const;
  Range piece_range(size_t shard, size_t piece) const;

  std::vector<std::byte> make_frame(uint8_t kind, size_t shard, size_t piece, std::span<const float> values) const;
  NetStatus send_frame(size_t rank, std::vector<std::byte> frame);
  void contribute(size_t owner, size_t piece);  // step 1 for one piece: send it, or keep and fold our own
  void send_window(size_t owner);               // contribute to `owner` while its window has room
  bool window_has_room(size_t owner) const;
  void on_frame(PeerId peer, std::vector<std::byte>& frame);
  void fold_ready(size_t piece);   // owner: fold contributions in rank order while possible
  void finish_piece(size_t piece); // owner: divide, encode once, broadcast
  void store_result(size_t shard, size_t piece, const std::vector<std::byte>& frame);  // step 4 for one piece
  void commit();
  void fail(NetStatus status);

  Transport& transport_;
  std::vector<PeerId> members_;
  std::vector<int32_t> rank_of_peer_;  // PeerId -> rank, -1 if not a member
  std::span<float> buffer_;            // written by store_result(), restored by fail()
  AllReduceOptions options_;
  size_t world_ = 0;
  size_t rank_ = 0;
  size_t count_ = 0;

  // scratch_.acc: the owner's f32 accumulator [shard length]; scratch_.saved: see result_written_.
  AllReduceScratch scratch_;
  // Owner side (shard == rank_): contributions_[piece][rank] holds a whole frame until folded.
  std::vector<std::vector<std::vector<std::byte>>> contributions_;
  std::vector<size_t> next_fold_rank_;
  // Every member: the send window per owner. next_piece_[owner] pieces were contributed,
  // acked_[owner] of their results received; in flight: the frame bytes of the difference.
  std::vector<size_t> next_piece_;
  std::vector<size_t> acked_;
  std::vector<uint64_t> bytes_in_flight_;
  uint64_t bytes_acked_total_ = 0;
  double rate_hint_ = 0;  // bytes per us per owner, from an earlier operation
  double acked_rate_per_owner() const;  // this operation's so far, bytes per us
  // Every member: result_written_[shard][piece] once that result is decoded into the buffer;
  // scratch_.saved (f32 [count]) holds the values it replaced there, for fail() to put back.
  std::vector<std::vector<bool>> result_written_;
  size_t results_held_ = 0;
  size_t results_total_ = 0;

  int64_t start_us_ = 0;
  int64_t deadline_us_ = 0;
  bool started_ = false;
  bool done_ = false;
  NetStatus status_;
  AllReduceStats stats_;
};

// Blocking driver for one member: runs an AllReduce to completion on a transport whose recv
// waits (TCP, or a lone simulated endpoint). Frames that belong to a later operation (a fast
// peer already started the next one) are kept and replayed into the next run; frames of older
// operations are dropped. The stash is bounded (kMaxEarlyFrames); beyond it, early frames are
// dropped and that later operation times out rather than memory growing without bound.
//
// The runner keeps the operations' scratch (count + count/N floats for the largest buffer so
// far): a steady sequence of all-reduces reuses it instead of faulting fresh pages in every
// time, which on a shaped 1 Gbit/s link cost 1-6% of the time of a 64 MiB all-reduce.
class AllReduceRunner {
 public:
  explicit AllReduceRunner(Transport& transport) : transport_(transport) {}
  NetStatus run(const std::vector<PeerId>& members, std::span<float> buffer, const AllReduceOptions& options,
                AllReduceStats* stats = nullptr);
  // Puts back the values the last run() replaced, when it succeeded: for a caller that learns
  // only afterwards that the operation must not count (another member failed it). Valid until
  // the next run(); returns false when there is nothing to put back.
  bool restore_input();

 private:
  static constexpr size_t kMaxEarlyFrames = 1u << 16;
  void keep_early(Message& message, uint64_t current_op_id);

  Transport& transport_;
  std::vector<Message> early_;  // frames of operations with a larger op_id
  double rate_hint_ = 0;        // the last large operation's acknowledged rate per owner
  AllReduceScratch scratch_;
  std::span<float> restorable_;  // the last successful run's buffer; its old values in scratch_.saved
};

}  // namespace meridian::net
