// The shared-state sync state machine; the algorithm, its cost and its failure rules are in
// state_sync.h. Names follow the prose: plan, pull, serve, verify, commit.
#include "net/state_sync/state_sync.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <map>

#include "core/assert.h"

namespace meridian::net {

namespace {

static_assert(std::endian::native == std::endian::little, "the wire format is little-endian");

constexpr uint8_t kKindRequest = 1;
constexpr uint8_t kKindChunk = 2;
constexpr uint8_t kKindAbort = 3;

// P2P_SyncRequest / P2P_SyncChunk / P2P_SyncAbort header, 40 bytes.
struct SyncHeader {
  uint32_t magic = kStateSyncMagic;
  uint16_t version = kStateSyncVersion;
  uint8_t kind = 0;
  uint8_t reserved0 = 0;
  uint64_t sync_id = 0;
  uint32_t buffer = 0;
  uint32_t reserved1 = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
  uint32_t reserved2 = 0;
};
static_assert(sizeof(SyncHeader) == kStateSyncHeaderBytes, "state-sync header must be 40 bytes, no padding");

SyncHeader read_header(std::span<const std::byte> frame) {
  SyncHeader h;
  std::memcpy(&h, frame.data(), sizeof(h));
  return h;
}

std::vector<std::byte> make_frame(const SyncHeader& h, std::span<const std::byte> payload) {
  std::vector<std::byte> frame(sizeof(h) + payload.size());
  std::memcpy(frame.data(), &h, sizeof(h));
  if (!payload.empty()) std::memcpy(frame.data() + sizeof(h), payload.data(), payload.size());
  return frame;
}

SyncCode sync_code_of(NetCode code) {
  switch (code) {
    case NetCode::kOk: return SyncCode::kOk;
    case NetCode::kTimeout: return SyncCode::kTimeout;
    case NetCode::kPeerLost: return SyncCode::kPeerLost;
    case NetCode::kMessageTooLarge: return SyncCode::kMessageTooLarge;
    case NetCode::kClosed: return SyncCode::kClosed;
    case NetCode::kProtocol: return SyncCode::kProtocol;
  }
  return SyncCode::kProtocol;
}

}  // namespace

const char* sync_code_name(SyncCode code) {
  switch (code) {
    case SyncCode::kOk: return "ok";
    case SyncCode::kTimeout: return "timeout";
    case SyncCode::kPeerLost: return "peer_lost";
    case SyncCode::kAborted: return "aborted";
    case SyncCode::kHashMismatch: return "hash_mismatch";
    case SyncCode::kProtocol: return "protocol";
    case SyncCode::kNoSource: return "no_source";
    case SyncCode::kClosed: return "closed";
    case SyncCode::kMessageTooLarge: return "message_too_large";
  }
  return "unknown";
}

std::string SyncStatus::to_string() const {
  std::string s = sync_code_name(code_);
  if (peer_ != kNoPeer) s += " (peer " + std::to_string(peer_) + ")";
  if (!detail_.empty()) s += ": " + detail_;
  return s;
}

std::optional<uint64_t> state_sync_frame_id(std::span<const std::byte> frame) {
  if (frame.size() < kStateSyncHeaderBytes) return std::nullopt;
  const SyncHeader h = read_header(frame);
  if (h.magic != kStateSyncMagic) return std::nullopt;
  return h.sync_id;
}

// ---- Plan ------------------------------------------------------------------------------------

SyncPlan plan_sync(const std::vector<PeerId>& view, const ElectedHashes& elected, size_t chunk_bytes) {
  MERIDIAN_ASSERT(chunk_bytes >= 1 && chunk_bytes <= 0xffffffffu, "chunk_bytes {} out of range", chunk_bytes);
  const size_t world = view.size();
  std::map<PeerId, size_t> rank_of;
  for (size_t r = 0; r < world; ++r) {
    MERIDIAN_ASSERT(rank_of.emplace(view[r], r).second, "peer {} listed twice in the view", view[r]);
  }
  SyncPlan plan;
  plan.downloads.resize(world);
  plan.missing.resize(world);
  plan.chunks_to_serve.assign(world, 0);
  for (size_t b = 0; b < elected.buffers.size(); ++b) {
    const ElectedBuffer& e = elected.buffers[b];
    std::vector<PeerId> sources;  // holders in the view, ascending
    for (PeerId h : e.holders) {
      if (rank_of.count(h)) sources.push_back(h);
    }
    const uint64_t chunks = (e.bytes + chunk_bytes - 1) / chunk_bytes;
    for (size_t r = 0; r < world; ++r) {
      if (std::binary_search(e.holders.begin(), e.holders.end(), view[r]) || elected.keeps_own(view[r])) continue;
      plan.missing[r].push_back(b);
      if (sources.empty()) {
        plan.unsourced_buffer = b;
        continue;
      }
      for (uint64_t c = 0; c < chunks; ++c) {
        const PeerId source = sources[(c + r) % sources.size()];
        const uint64_t offset = c * chunk_bytes;
        const uint32_t length = static_cast<uint32_t>(std::min<uint64_t>(chunk_bytes, e.bytes - offset));
        plan.downloads[r].push_back(SyncChunk{static_cast<uint32_t>(b), offset, length, source});
        ++plan.chunks_to_serve[rank_of[source]];
      }
    }
  }
  return plan;
}

// ---- StateSync ---------------------------------------------------------------------------------

StateSync::StateSync(Transport& transport, std::vector<PeerId> view, SharedState& state, const ElectedHashes& elected,
                     const StateSyncOptions& options)
    : transport_(transport), view_(std::move(view)), state_(state), elected_(elected), options_(options) {
  MERIDIAN_ASSERT(options_.window_per_source >= 1, "window_per_source must be positive");
  MERIDIAN_ASSERT(elected_.buffers.size() <= 0xffffffffu, "too many buffers: {}", elected_.buffers.size());
  const int32_t self_rank = rank_of(transport_.self());
  MERIDIAN_ASSERT(self_rank >= 0, "peer {} is not in the view", transport_.self());
  rank_ = static_cast<size_t>(self_rank);
  plan_ = plan_sync(view_, elected_, options_.chunk_bytes);

  staged_of_buffer_.assign(elected_.buffers.size(), -1);
  for (size_t b : plan_.missing[rank_]) {
    staged_of_buffer_[b] = static_cast<int64_t>(staged_.size());
    Staged s;
    s.buffer = b;
    staged_.push_back(std::move(s));
  }
  buffers_unverified_ = staged_.size();
  queue_.resize(view_.size());
  queue_next_.assign(view_.size(), 0);
  outstanding_.assign(view_.size(), 0);
  for (const SyncChunk& c : plan_.downloads[rank_]) queue_[static_cast<size_t>(rank_of(c.source))].push_back(c);
}

int32_t StateSync::rank_of(PeerId peer) const {
  for (size_t r = 0; r < view_.size(); ++r) {
    if (view_[r] == peer) return static_cast<int32_t>(r);
  }
  return -1;
}

void StateSync::start() {
  MERIDIAN_ASSERT(!started_, "StateSync started twice");
  started_ = true;
  start_us_ = transport_.clock().now_us();
  deadline_us_ = start_us_ + options_.timeout_ms * 1000;
  if (options_.chunk_bytes + kStateSyncHeaderBytes > transport_.max_message_bytes()) {
    fail(SyncStatus::error(SyncCode::kMessageTooLarge, kNoPeer,
                           "chunk_bytes " + std::to_string(options_.chunk_bytes) + " + header > transport max " +
                               std::to_string(transport_.max_message_bytes())));
    return;
  }
  if (plan_.unsourced_buffer) {
    fail(SyncStatus::error(SyncCode::kNoSource, kNoPeer,
                           "elected buffer '" + elected_.buffers[*plan_.unsourced_buffer].name +
                               "' has no holder in the view"));
    return;
  }
  // Staging: one copy of every missing buffer. A zero-byte buffer is complete at once.
  for (Staged& s : staged_) {
    const ElectedBuffer& e = elected_.buffers[s.buffer];
    s.bytes.resize(e.bytes);
    s.chunks_left = (e.bytes + options_.chunk_bytes - 1) / options_.chunk_bytes;
    s.chunk_received.assign(s.chunks_left, false);
    if (s.chunks_left == 0) {
      if (xxh3_128(s.bytes.data(), 0) != e.hash) {
        fail(SyncStatus::error(SyncCode::kHashMismatch, kNoPeer, "empty buffer '" + e.name + "' has another hash"));
        return;
      }
      s.verified = true;
      --buffers_unverified_;
    }
  }
  for (size_t r = 0; r < view_.size() && !done_; ++r) issue_requests(r);
  if (!done_) maybe_finish();
}

void StateSync::issue_requests(size_t source_rank) {
  auto& queue = queue_[source_rank];
  while (!done_ && outstanding_[source_rank] < options_.window_per_source && queue_next_[source_rank] < queue.size()) {
    const SyncChunk& c = queue[queue_next_[source_rank]++];
    SyncHeader h;
    h.kind = kKindRequest;
    h.sync_id = options_.sync_id;
    h.buffer = c.buffer;
    h.offset = c.offset;
    h.length = c.length;
    ++outstanding_[source_rank];
    if (!send_frame(c.source, make_frame(h, {}))) return;
  }
}

bool StateSync::send_frame(PeerId peer, std::vector<std::byte> frame) {
  stats_.bytes_sent_total += frame.size();
  const NetStatus st = transport_.send(peer, std::move(frame));
  if (st.is_ok()) return true;
  fail(SyncStatus::error(sync_code_of(st.code()), st.peer() != kNoPeer ? st.peer() : peer, "send: " + st.detail()));
  return false;
}

StateSync::Disposition StateSync::on_recv(const NetStatus& status, Message& message) {
  if (done_) return Disposition::kConsumed;
  if (!status.is_ok()) {
    switch (status.code()) {
      case NetCode::kTimeout:
        check_deadline();
        break;
      case NetCode::kPeerLost:
        // Only a member's loss matters; the transport may know peers outside this view.
        if (status.peer() != transport_.self() && rank_of(status.peer()) >= 0) {
          fail(SyncStatus::error(SyncCode::kPeerLost, status.peer(), status.detail()));
        }
        break;
      default:
        fail(SyncStatus::error(sync_code_of(status.code()), status.peer(), status.detail()));
        break;
    }
    return Disposition::kConsumed;
  }
  const std::optional<uint64_t> id = state_sync_frame_id(message.bytes);
  if (!id) return Disposition::kForeign;
  if (*id > options_.sync_id) return Disposition::kForeign;
  if (*id < options_.sync_id) return Disposition::kConsumed;  // an older, finished sync: drop
  stats_.bytes_recv_total += message.bytes.size();
  on_frame(message.peer, message.bytes);
  return Disposition::kConsumed;
}

void StateSync::on_frame(PeerId peer, std::vector<std::byte>& frame) {
  if (rank_of(peer) < 0) return;  // not a member of this view: ignore
  const SyncHeader h = read_header(frame);
  if (h.version != kStateSyncVersion) {
    fail(SyncStatus::error(SyncCode::kProtocol, peer,
                           "state-sync version " + std::to_string(h.version) + ", expected " +
                               std::to_string(kStateSyncVersion)));
    return;
  }
  const size_t payload = frame.size() - kStateSyncHeaderBytes;
  switch (h.kind) {
    case kKindRequest:
      if (payload != 0) break;
      on_request(peer, h.buffer, h.offset, h.length);
      return;
    case kKindChunk:
      if (payload != h.length) break;
      on_chunk(peer, h.buffer, h.offset, h.length, std::span<const std::byte>(frame).subspan(kStateSyncHeaderBytes));
      return;
    case kKindAbort:
      fail(SyncStatus::error(SyncCode::kAborted, peer, "a member failed the sync"));
      return;
    default:
      break;
  }
  fail(SyncStatus::error(SyncCode::kProtocol, peer,
                         "malformed frame: kind " + std::to_string(h.kind) + ", length " + std::to_string(h.length) +
                             ", payload " + std::to_string(payload) + " bytes"));
}

void StateSync::on_request(PeerId peer, uint32_t buffer, uint64_t offset, uint32_t length) {
  auto reject = [&](const std::string& why) {
    fail(SyncStatus::error(SyncCode::kProtocol, peer,
                           "bad request for buffer " + std::to_string(buffer) + " [" + std::to_string(offset) + ", +" +
                               std::to_string(length) + "): " + why));
  };
  if (buffer >= elected_.buffers.size()) return reject("no such buffer");
  const ElectedBuffer& e = elected_.buffers[buffer];
  if (!std::binary_search(e.holders.begin(), e.holders.end(), transport_.self())) return reject("not a holder");
  const SharedState::Buffer* local = state_.find(e.name);
  if (local == nullptr || local->bytes.size() != e.bytes || local->dtype != e.dtype) {
    return reject("local buffer '" + e.name + "' differs from the elected one in size or dtype");
  }
  if (length == 0 || length > options_.chunk_bytes || offset > e.bytes || e.bytes - offset < length) {
    return reject("range outside the buffer of " + std::to_string(e.bytes) + " bytes");
  }
  if (chunks_served_ >= plan_.chunks_to_serve[rank_]) return reject("more requests than the plan assigns");
  SyncHeader h;
  h.kind = kKindChunk;
  h.sync_id = options_.sync_id;
  h.buffer = buffer;
  h.offset = offset;
  h.length = length;
  if (!send_frame(peer, make_frame(h, std::span<const std::byte>(local->bytes).subspan(offset, length)))) return;
  ++chunks_served_;
  ++stats_.chunks_served;
  stats_.bytes_served += length;
  maybe_finish();
}

void StateSync::on_chunk(PeerId peer, uint32_t buffer, uint64_t offset, uint32_t length,
                         std::span<const std::byte> payload) {
  auto reject = [&](const std::string& why) {
    fail(SyncStatus::error(SyncCode::kProtocol, peer,
                           "unexpected chunk of buffer " + std::to_string(buffer) + " at " + std::to_string(offset) +
                               ": " + why));
  };
  if (buffer >= staged_of_buffer_.size() || staged_of_buffer_[buffer] < 0) return reject("not a missing buffer");
  Staged& s = staged_[static_cast<size_t>(staged_of_buffer_[buffer])];
  const ElectedBuffer& e = elected_.buffers[buffer];
  if (offset % options_.chunk_bytes != 0 || offset >= e.bytes) return reject("not a chunk boundary");
  const uint64_t chunk = offset / options_.chunk_bytes;
  if (length != std::min<uint64_t>(options_.chunk_bytes, e.bytes - offset)) return reject("wrong length");
  if (s.chunk_received[chunk]) return reject("duplicate");
  const int32_t source_rank = rank_of(peer);
  if (outstanding_[static_cast<size_t>(source_rank)] == 0) return reject("nothing requested from this peer");
  s.chunk_received[chunk] = true;
  std::memcpy(s.bytes.data() + offset, payload.data(), length);
  stats_.bytes_downloaded += length;
  ++stats_.chunks_downloaded;
  --outstanding_[static_cast<size_t>(source_rank)];
  if (--s.chunks_left == 0) {
    const Hash128 got = xxh3_128(s.bytes.data(), s.bytes.size());
    if (got != e.hash) {
      fail(SyncStatus::error(SyncCode::kHashMismatch, kNoPeer,
                             "buffer '" + e.name + "' (" + std::to_string(e.bytes) + " bytes): expected " +
                                 e.hash.hex() + ", got " + got.hex()));
      return;
    }
    s.verified = true;
    --buffers_unverified_;
  }
  issue_requests(static_cast<size_t>(source_rank));
  if (!done_) maybe_finish();
}

void StateSync::maybe_finish() {
  if (buffers_unverified_ != 0 || chunks_served_ < plan_.chunks_to_serve[rank_]) return;
  commit();
  done_ = true;
  status_ = SyncStatus();
  stats_.elapsed_us = transport_.clock().now_us() - start_us_;
}

// The only write to the caller's state: every staged buffer is verified by now. A member that
// keeps its own state has nothing staged and keeps its other buffers and revision too.
void StateSync::commit() {
  if (elected_.keeps_own(transport_.self())) return;
  for (Staged& s : staged_) {
    const ElectedBuffer& e = elected_.buffers[s.buffer];
    state_.put(e.name, e.dtype, std::move(s.bytes));
    ++stats_.buffers_downloaded;
  }
  staged_.clear();
  std::vector<std::string> unelected;
  for (const SharedState::Buffer& b : state_.buffers()) {
    const bool is_elected = std::ranges::binary_search(elected_.buffers, b.name, {}, &ElectedBuffer::name);
    if (!is_elected) unelected.push_back(b.name);
  }
  for (const std::string& name : unelected) state_.erase(name);
  state_.set_revision(elected_.revision);
}

void StateSync::check_deadline() {
  if (done_ || !started_) return;
  if (transport_.clock().now_us() >= deadline_us_) {
    fail(SyncStatus::error(SyncCode::kTimeout, kNoPeer,
                           "sync " + std::to_string(options_.sync_id) + " not done after " +
                               std::to_string(options_.timeout_ms) + " ms"));
  }
}

void StateSync::fail(SyncStatus status) {
  if (done_) return;
  done_ = true;
  status_ = std::move(status);
  stats_.elapsed_us = transport_.clock().now_us() - start_us_;
  staged_.clear();  // the caller's state was never touched; free the staging copies
  // Best effort: tell the other members so they stop at once instead of at their deadline.
  SyncHeader h;
  h.kind = kKindAbort;
  h.sync_id = options_.sync_id;
  for (PeerId p : view_) {
    if (p == transport_.self() || p == status_.peer()) continue;
    (void)transport_.send(p, make_frame(h, {}));
  }
}

// ---- StateSyncRunner ---------------------------------------------------------------------------

SyncStatus StateSyncRunner::run(const std::vector<PeerId>& view, SharedState& state, const ElectedHashes& elected,
                                const StateSyncOptions& options, SyncStats* stats) {
  StateSync op(transport_, view, state, elected, options);
  op.start();
  std::vector<Message> early;
  early.swap(early_);
  for (Message& m : early) {
    const std::optional<uint64_t> id = state_sync_frame_id(m.bytes);
    if (id && *id > options.sync_id && early_.size() < kMaxEarlyFrames) {
      early_.push_back(std::move(m));
    } else if (id && *id == options.sync_id) {
      op.on_recv(NetStatus::ok(), m);
    }
  }
  while (!op.done()) {
    Message m;
    const NetStatus st = transport_.recv(&m, op.deadline_us());
    if (op.on_recv(st, m) == StateSync::Disposition::kForeign) {
      const std::optional<uint64_t> id = state_sync_frame_id(m.bytes);
      if (id && early_.size() < kMaxEarlyFrames) {
        early_.push_back(std::move(m));
      } else {
        ++foreign_frames_dropped_;
      }
    }
    op.check_deadline();
  }
  if (stats != nullptr) *stats = op.stats();
  return op.status();
}

}  // namespace meridian::net
