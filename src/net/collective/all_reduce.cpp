// The all-reduce state machine; the algorithm and its cost are described in all_reduce.h and
// docs/algorithms.md. Names follow the prose: contribute, reduce (fold), broadcast, write (store_result).
#include "net/collective/all_reduce.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "core/assert.h"

namespace meridian::net {

namespace {

constexpr uint8_t kKindContribution = 1;
constexpr uint8_t kKindResult = 2;

// P2P_Chunk header, little-endian, 32 bytes.
struct ChunkHeader {
  uint32_t magic = kAllReduceMagic;
  uint16_t version = kAllReduceVersion;
  uint8_t kind = 0;
  uint8_t codec = 0;
  uint64_t op_id = 0;
  uint32_t shard = 0;
  uint32_t piece = 0;
  uint32_t sender_rank = 0;
  uint32_t count = 0;
};
static_assert(sizeof(ChunkHeader) == kAllReduceHeaderBytes, "P2P_Chunk header must be 32 bytes, no padding");

ChunkHeader read_header(std::span<const std::byte> frame) {
  ChunkHeader h;
  std::memcpy(&h, frame.data(), sizeof(h));
  return h;
}

}  // namespace

std::optional<uint64_t> all_reduce_frame_op_id(std::span<const std::byte> frame) {
  if (frame.size() < kAllReduceHeaderBytes) return std::nullopt;
  const ChunkHeader h = read_header(frame);
  if (h.magic != kAllReduceMagic) return std::nullopt;
  return h.op_id;
}

AllReduce::AllReduce(Transport& transport, std::vector<PeerId> members, std::span<float> buffer,
                     const AllReduceOptions& options)
    : transport_(transport), members_(std::move(members)), buffer_(buffer), options_(options) {
  world_ = members_.size();
  count_ = buffer_.size();
  MERIDIAN_ASSERT(world_ >= 1, "an all-reduce needs at least one member");
  MERIDIAN_ASSERT(options_.chunk_values >= 1, "chunk_values must be positive");
  MERIDIAN_ASSERT(count_ <= 0xffffffffull * world_, "buffer of {} values too large", count_);
  rank_of_peer_.assign(transport_.peer_count(), -1);
  bool found_self = false;
  for (size_t r = 0; r < world_; ++r) {
    const PeerId p = members_[r];
    MERIDIAN_ASSERT(p < rank_of_peer_.size() && rank_of_peer_[p] < 0, "member {} invalid or listed twice", p);
    rank_of_peer_[p] = static_cast<int32_t>(r);
    if (p == transport_.self()) {
      rank_ = r;
      found_self = true;
    }
  }
  MERIDIAN_ASSERT(found_self, "peer {} is not a member of the all-reduce", transport_.self());
  const size_t frame_max = kAllReduceHeaderBytes + encoded_size(options_.codec, options_.chunk_values);
  MERIDIAN_ASSERT(frame_max <= transport_.max_message_bytes(), "chunk_values {} gives {}-byte frames > transport max {}",
                  options_.chunk_values, frame_max, transport_.max_message_bytes());
}

size_t AllReduce::piece_count(size_t shard) const {
  const size_t length = shard_begin(shard + 1) - shard_begin(shard);
  return (length + options_.chunk_values - 1) / options_.chunk_values;
}

AllReduce::Range AllReduce::piece_range(size_t shard, size_t piece) const {
  const size_t shard_end = shard_begin(shard + 1);
  const size_t begin = shard_begin(shard) + piece * options_.chunk_values;
  return Range{begin, std::min(options_.chunk_values, shard_end - begin)};
}

std::vector<std::byte> AllReduce::make_frame(uint8_t kind, size_t shard, size_t piece,
                                             std::span<const float> values) const {
  ChunkHeader h;
  h.kind = kind;
  h.codec = static_cast<uint8_t>(options_.codec);
  h.op_id = options_.op_id;
  h.shard = static_cast<uint32_t>(shard);
  h.piece = static_cast<uint32_t>(piece);
  h.sender_rank = static_cast<uint32_t>(rank_);
  h.count = static_cast<uint32_t>(values.size());
  std::vector<std::byte> frame(kAllReduceHeaderBytes + encoded_size(options_.codec, values.size()));
  std::memcpy(frame.data(), &h, sizeof(h));
  encode(options_.codec, values, std::span<std::byte>(frame).subspan(kAllReduceHeaderBytes));
  return frame;
}

NetStatus AllReduce::send_frame(size_t rank, std::vector<std::byte> frame) {
  const size_t frame_bytes = frame.size();
  NetStatus st = transport_.send(members_[rank], std::move(frame));
  if (!st.is_ok()) return st;
  stats_.bytes_sent_total += frame_bytes;
  stats_.payload_bytes_sent += frame_bytes - kAllReduceHeaderBytes;
  stats_.messages_sent += 1;
  return st;
}

void AllReduce::start() {
  MERIDIAN_ASSERT(!started_, "AllReduce::start called twice");
  started_ = true;
  start_us_ = transport_.clock().now_us();
  deadline_us_ = start_us_ + options_.timeout_ms * 1000;

  const size_t own_pieces = piece_count(rank_);
  // Grown only: rank 0's contribution initialises each accumulator piece, and a range is saved
  // before a result overwrites it, so old contents do not matter.
  const size_t shard_length = shard_begin(rank_ + 1) - shard_begin(rank_);
  if (scratch_.acc.size() < shard_length) scratch_.acc.resize(shard_length);
  if (scratch_.saved.size() < count_) scratch_.saved.resize(count_);
  contributions_.assign(own_pieces, std::vector<std::vector<std::byte>>(world_));
  next_fold_rank_.assign(own_pieces, 0);
  result_written_.assign(world_, {});
  results_total_ = 0;
  size_t max_pieces = 0;
  for (size_t j = 0; j < world_; ++j) {
    result_written_[j].assign(piece_count(j), false);
    results_total_ += piece_count(j);
    max_pieces = std::max(max_pieces, piece_count(j));
  }

  // Step 1, contribute: piece-major, starting with the next rank, the first window only.
  next_piece_.assign(world_, 0);
  acked_.assign(world_, 0);
  bytes_in_flight_.assign(world_, 0);
  for (size_t k = 0; k < max_pieces && !done_; ++k) {
    for (size_t d = 0; d < world_ && !done_; ++d) {
      const size_t owner = (rank_ + 1 + d) % world_;  // d = world_ - 1 is this member itself
      if (k >= piece_count(owner) || next_piece_[owner] != k || (owner != rank_ && !window_has_room(owner))) continue;
      contribute(owner, k);
    }
  }
  if (!done_ && results_held_ == results_total_) commit();  // nothing to wait for (N = 1, count = 0)
}

void AllReduce::contribute(size_t owner, size_t piece) {
  MERIDIAN_ASSERT(piece == next_piece_[owner], "contribution {} to owner {} out of order (next {})", piece, owner,
                  next_piece_[owner]);
  ++next_piece_[owner];
  const Range r = piece_range(owner, piece);
  std::vector<std::byte> frame =
      make_frame(kKindContribution, owner, piece, std::span<const float>(buffer_).subspan(r.begin, r.count));
  if (owner == rank_) {  // our own piece is not windowed: nothing travels
    contributions_[piece][rank_] = std::move(frame);
    fold_ready(piece);
  } else {
    bytes_in_flight_[owner] += frame.size();
    NetStatus st = send_frame(owner, std::move(frame));
    if (!st.is_ok()) fail(st);
  }
}

double AllReduce::acked_rate_per_owner() const {
  if (world_ < 2) return 0;
  const int64_t elapsed_us = std::max<int64_t>(1, transport_.clock().now_us() - start_us_);
  return static_cast<double>(bytes_acked_total_) / static_cast<double>(world_ - 1) / static_cast<double>(elapsed_us);
}

double AllReduce::rate_hint() const {
  // Only an operation that kept its windows busy measured the links; it must have moved at
  // least a few minimal windows per owner.
  if (world_ < 2 || options_.window_bytes == 0) return 0;
  if (bytes_acked_total_ < (world_ - 1) * 4 * options_.window_bytes) return 0;
  return static_cast<double>(bytes_acked_total_) / static_cast<double>(world_ - 1) /
         static_cast<double>(std::max<int64_t>(1, stats_.elapsed_us));
}

// Room for the next piece to `owner`: fewer than two pieces in flight, or the window's bytes.
// The window is kWindowTargetUs of the rate at which results came back so far (per owner),
// within [window_bytes, kMaxWindowBytes]: long enough to keep a fast link busy while a piece
// makes its round trip, short enough that a slow link's queue does not delay the results.
bool AllReduce::window_has_room(size_t owner) const {
  if (options_.window_bytes == 0) return true;
  if (next_piece_[owner] - acked_[owner] < 2) return true;
  // Before this operation's own results come back, half the earlier rate: a fast start on a
  // fast link, and a slow link's estimate takes over as soon as it is measured.
  const double rate_per_owner = std::max(acked_rate_per_owner(), rate_hint_ / 2);  // bytes per us
  const uint64_t window = std::clamp<uint64_t>(static_cast<uint64_t>(rate_per_owner * kWindowTargetUs),
                                               options_.window_bytes, kMaxWindowBytes);
  const Range r = piece_range(owner, next_piece_[owner]);
  return bytes_in_flight_[owner] + kAllReduceHeaderBytes + encoded_size(options_.codec, r.count) <= window;
}

// Each result from `owner` acknowledges one of our contributions to it (its piece could not
// be reduced without ours), so the window slides.
void AllReduce::send_window(size_t owner) {
  while (!done_ && next_piece_[owner] < piece_count(owner) && window_has_room(owner)) {
    contribute(owner, next_piece_[owner]);
  }
}

AllReduce::Disposition AllReduce::on_recv(const NetStatus& status, Message& message) {
  if (done_) {
    if (status.is_ok()) {
      const std::optional<uint64_t> op = all_reduce_frame_op_id(message.bytes);
      if (op && *op != options_.op_id) return Disposition::kForeign;
    }
    return Disposition::kConsumed;
  }
  MERIDIAN_ASSERT(started_, "AllReduce::on_recv before start");
  if (!status.is_ok()) {
    if (status.code() == NetCode::kTimeout) {
      check_deadline();
    } else if (status.code() == NetCode::kPeerLost) {
      const PeerId p = status.peer();
      if (p < rank_of_peer_.size() && rank_of_peer_[p] >= 0) fail(status);
    } else {
      fail(status);
    }
    return Disposition::kConsumed;
  }
  const std::optional<uint64_t> op = all_reduce_frame_op_id(message.bytes);
  if (op && *op != options_.op_id) return Disposition::kForeign;
  on_frame(message.peer, message.bytes);
  return Disposition::kConsumed;
}

void AllReduce::on_frame(PeerId peer, std::vector<std::byte>& frame) {
  auto protocol_error = [&](const std::string& what) {
    fail(NetStatus::error(NetCode::kProtocol, peer, "all-reduce op " + std::to_string(options_.op_id) + ": " + what));
  };
  if (peer >= rank_of_peer_.size() || rank_of_peer_[peer] < 0) {
    return protocol_error("frame from a peer that is not a member");
  }
  const size_t sender = static_cast<size_t>(rank_of_peer_[peer]);
  if (frame.size() < kAllReduceHeaderBytes) return protocol_error("short frame of " + std::to_string(frame.size()) + " bytes");
  const ChunkHeader h = read_header(frame);
  if (h.magic != kAllReduceMagic) return protocol_error("bad magic");
  if (h.version != kAllReduceVersion) {
    return protocol_error("wire version " + std::to_string(h.version) + ", expected " +
                          std::to_string(kAllReduceVersion));
  }
  if (h.codec != static_cast<uint8_t>(options_.codec)) {
    return protocol_error("codec " + std::to_string(h.codec) + ", expected " + std::string(codec_name(options_.codec)));
  }
  if (h.sender_rank != sender) return protocol_error("sender rank " + std::to_string(h.sender_rank) + " from rank " + std::to_string(sender));
  if (h.shard >= world_ || h.piece >= piece_count(h.shard)) return protocol_error("no piece " + std::to_string(h.shard) + "/" + std::to_string(h.piece));
  const Range r = piece_range(h.shard, h.piece);
  if (h.count != r.count || frame.size() != kAllReduceHeaderBytes + encoded_size(options_.codec, r.count)) {
    return protocol_error("piece " + std::to_string(h.shard) + "/" + std::to_string(h.piece) + ": " +
                          std::to_string(frame.size()) + " bytes for " + std::to_string(h.count) + " values, expected " +
                          std::to_string(r.count) + " values");
  }
  stats_.bytes_recv_total += frame.size();
  stats_.payload_bytes_recv += frame.size() - kAllReduceHeaderBytes;
  stats_.messages_recv += 1;

  if (h.kind == kKindContribution) {
    if (h.shard != rank_) return protocol_error("contribution for shard " + std::to_string(h.shard) + " sent to its non-owner");
    std::vector<std::byte>& slot = contributions_[h.piece][sender];
    if (!slot.empty() || next_fold_rank_[h.piece] > sender) return protocol_error("duplicate contribution");
    slot = std::move(frame);
    fold_ready(h.piece);
  } else if (h.kind == kKindResult) {
    if (h.shard != sender) return protocol_error("result for shard " + std::to_string(h.shard) + " from its non-owner");
    if (result_written_[h.shard][h.piece]) return protocol_error("duplicate result");
    if (h.piece >= next_piece_[h.shard]) return protocol_error("result for a piece not yet contributed");
    const uint64_t acked_bytes = frame.size();  // the same count, so the size of our contribution
    ++acked_[h.shard];
    bytes_in_flight_[h.shard] -= acked_bytes;
    bytes_acked_total_ += acked_bytes;
    store_result(h.shard, h.piece, frame);
    send_window(h.shard);
  } else {
    return protocol_error("unknown frame kind " + std::to_string(h.kind));
  }
}

// Step 2, reduce: fold contributions strictly in rank order.
void AllReduce::fold_ready(size_t piece) {
  const Range r = piece_range(rank_, piece);
  std::span<float> acc(scratch_.acc.data() + (r.begin - shard_begin(rank_)), r.count);
  std::vector<std::vector<std::byte>>& slots = contributions_[piece];
  size_t& next = next_fold_rank_[piece];
  while (next < world_ && !slots[next].empty()) {
    const std::span<const std::byte> payload = std::span<const std::byte>(slots[next]).subspan(kAllReduceHeaderBytes);
    if (next == 0) {
      decode(options_.codec, payload, acc);
    } else {
      decode_add(options_.codec, payload, acc);
    }
    std::vector<std::byte>().swap(slots[next]);  // free it now
    ++next;
  }
  if (next == world_) finish_piece(piece);
}

// Step 3, broadcast: one encoding of the reduced piece, the same bytes to everyone.
void AllReduce::finish_piece(size_t piece) {
  const Range r = piece_range(rank_, piece);
  std::span<float> acc(scratch_.acc.data() + (r.begin - shard_begin(rank_)), r.count);
  if (options_.op == ReduceOp::kMean) {
    const float n = static_cast<float>(world_);
    for (float& v : acc) v /= n;
  }
  std::vector<std::byte> frame = make_frame(kKindResult, rank_, piece, acc);
  for (size_t d = 1; d < world_ && !done_; ++d) {
    NetStatus st = send_frame((rank_ + d) % world_, frame);
    if (!st.is_ok()) fail(st);
  }
  if (!done_) store_result(rank_, piece, frame);
}

// Step 4, write the result: save the values it replaces, then decode it in place. Our own
// contribution to this piece was encoded before (a result acknowledges it), so no input that is
// still needed is overwritten.
void AllReduce::store_result(size_t shard, size_t piece, const std::vector<std::byte>& frame) {
  const Range r = piece_range(shard, piece);
  std::span<float> values = buffer_.subspan(r.begin, r.count);
  std::copy(values.begin(), values.end(), scratch_.saved.begin() + r.begin);
  decode(options_.codec, std::span<const std::byte>(frame).subspan(kAllReduceHeaderBytes), values);
  result_written_[shard][piece] = true;
  ++results_held_;
  if (results_held_ == results_total_ && started_) commit();
}

void AllReduce::commit() {
  if (done_) return;
  result_written_.clear();  // scratch_.saved keeps the old values for AllReduceRunner::restore_input
  done_ = true;
  status_ = NetStatus::ok();
  stats_.elapsed_us = transport_.clock().now_us() - start_us_;
}

void AllReduce::fail(NetStatus status) {
  if (done_) return;
  done_ = true;
  status_ = std::move(status);
  stats_.elapsed_us = transport_.clock().now_us() - start_us_;
  // Put back what the results overwrote, then drop what we hold: the buffer is as it was.
  for (size_t j = 0; j < result_written_.size(); ++j) {
    for (size_t k = 0; k < result_written_[j].size(); ++k) {
      if (!result_written_[j][k]) continue;
      const Range r = piece_range(j, k);
      std::copy(scratch_.saved.begin() + r.begin, scratch_.saved.begin() + r.begin + r.count, buffer_.begin() + r.begin);
    }
  }
  contributions_.clear();
  result_written_.clear();
}

void AllReduce::check_deadline() {
  if (done_) return;
  const int64_t now = transport_.clock().now_us();
  if (now >= deadline_us_) {
    fail(NetStatus::error(NetCode::kTimeout, kNoPeer,
                          "all-reduce op " + std::to_string(options_.op_id) + " not finished after " +
                              std::to_string(options_.timeout_ms) + " ms (" + std::to_string(results_held_) + " of " +
                              std::to_string(results_total_) + " pieces)"));
  }
}

// ---- AllReduceRunner ------------------------------------------------------------------------

void AllReduceRunner::keep_early(Message& message, uint64_t current_op_id) {
  const std::optional<uint64_t> id = all_reduce_frame_op_id(message.bytes);
  if (id && *id > current_op_id && early_.size() < kMaxEarlyFrames) early_.push_back(std::move(message));
}

NetStatus AllReduceRunner::run(const std::vector<PeerId>& members, std::span<float> buffer,
                               const AllReduceOptions& options, AllReduceStats* stats) {
  restorable_ = {};
  AllReduce op(transport_, members, buffer, options);
  op.set_rate_hint(rate_hint_);
  op.adopt_scratch(std::move(scratch_));
  op.start();
  // Replay frames that arrived for this operation while an earlier one ran.
  std::vector<Message> early;
  early.swap(early_);
  for (Message& m : early) {
    const std::optional<uint64_t> id = all_reduce_frame_op_id(m.bytes);
    if (id && *id == options.op_id) {
      op.on_recv(NetStatus::ok(), m);
    } else {
      keep_early(m, options.op_id);
    }
  }
  while (!op.done()) {
    Message m;
    const NetStatus st = transport_.recv(&m, op.deadline_us());
    if (op.on_recv(st, m) == AllReduce::Disposition::kForeign) keep_early(m, options.op_id);
  }
  if (stats != nullptr) *stats = op.stats();
  if (op.status().is_ok() && op.rate_hint() > 0) rate_hint_ = op.rate_hint();
  scratch_ = op.release_scratch();
  if (op.status().is_ok()) restorable_ = buffer;
  return op.status();
}

bool AllReduceRunner::restore_input() {
  if (restorable_.empty()) return false;
  std::copy(scratch_.saved.begin(), scratch_.saved.begin() + restorable_.size(), restorable_.begin());
  restorable_ = {};
  return true;
}

size_t piece_values_for(Codec codec, size_t wire_bytes) {
  const size_t bytes_per_value = std::max<size_t>(1, encoded_size(codec, 1u << 16) >> 16);
  return std::max<size_t>(1, wire_bytes / bytes_per_value);
}

}  // namespace meridian::net
