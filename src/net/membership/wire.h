// The control protocol of a run: how peers talk to the coordinator (C2M_*, M2C_*), and the
// authenticated handshake that opens every connection, peer -> coordinator and peer -> peer.
// Pure encode/decode, no I/O: the coordinator daemon, the peers and the fuzz targets share it.
//
// Framing (frozen across protocol versions, so that a peer of another version still gets a
// readable refusal):  { u32 magic "MRCF", u32 length, length bytes of payload }, little-endian,
// length <= kMaxControlMessageBytes. A payload starts with its u8 MsgType.
//
// Handshake (the connector C, the acceptor A; token = the run's shared secret):
//   C -> A  Hello     { u16 version, u8 role, u64 epoch, u32 from_peer, u32 stream, nonce_c[32] }
//   A -> C  Challenge { nonce_a[32], proof_a[32] }      proof_a = HMAC-SHA256(token, "A" | hello | nonce_a)
//   C -> A  Proof     { proof_c[32] }                   proof_c = HMAC-SHA256(token, "C" | hello | nonce_a)
//   A -> C  Verdict   { u8 accepted, str reason }
// A refuses a hello of another version (or an unexpected role / epoch) at once with a Verdict
// that says why; a wrong proof_c gets Verdict{refused, "wrong run token"}. C checks proof_a, so
// it also notices an acceptor that does not know the token. Both nonces are fresh per
// connection, so a recorded handshake cannot be replayed. The first bytes of Hello (type,
// version) and all of Verdict are frozen across versions.
//
// Deliberately not here: encryption (the token authenticates connections; the payload is not
// secret in this threat model), sockets, retries. Invariant: decode(encode(m)) == m, and decode
// of any byte string either returns a message whose fields are within the documented bounds or
// a one-line error; it never reads out of bounds (fuzzed: tests/fuzz/fuzz_coord_wire.cpp).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "core/status.h"
#include "net/state_sync/shared_state.h"
#include "net/transport/transport.h"

namespace meridian::net::membership {

inline constexpr uint32_t kControlFrameMagic = 0x4643524du;  // "MRCF" little-endian
inline constexpr uint16_t kProtocolVersion = 5;  // 4: members carry their local ranks' addresses; 5: a barrier tells held-back joiners
inline constexpr size_t kFrameHeaderBytes = 8;
inline constexpr size_t kMaxControlMessageBytes = 1u << 20;
inline constexpr size_t kMaxStringBytes = 4096;
inline constexpr size_t kMaxViewMembers = 4096;
// A node of G local ranks lists the mesh addresses of ranks 1..G-1 (at most this many).
inline constexpr size_t kMaxRankAddresses = 63;
inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kProofBytes = 32;
// Shared-state sync: at most this many buffers per report, names at most this long, so that a
// report (4096 x (4 + 128 + 33) bytes) always fits one control frame. The elected hashes reuse
// the bounds and carry each distinct holder set once.
inline constexpr size_t kMaxSyncBuffers = 4096;
inline constexpr size_t kMaxBufferNameBytes = 128;

using Nonce = std::array<uint8_t, kNonceBytes>;
using Proof = std::array<uint8_t, kProofBytes>;

enum class MsgType : uint8_t {
  kHello = 1,
  kChallenge = 2,
  kProof = 3,
  kVerdict = 4,
  kC2M_Join = 16,
  kC2M_Heartbeat = 17,
  kC2M_UpdateTopology = 18,
  kC2M_Leave = 19,
  kC2M_OpBegin = 20,
  kC2M_OpResult = 21,
  kC2M_SyncReport = 22,
  kM2C_Welcome = 32,
  kM2C_View = 33,
  kM2C_OpFinal = 34,
  kM2C_SyncElected = 35,
};

enum class Role : uint8_t { kPeerToCoordinator = 1, kPeerToPeer = 2 };

// ---- handshake ------------------------------------------------------------------------------
struct Hello {
  uint16_t version = kProtocolVersion;
  Role role = Role::kPeerToCoordinator;
  uint64_t epoch = 0;           // peer -> peer: the view's epoch; both ends must agree
  uint32_t from_peer = kNoPeer; // peer -> peer: the connector's rank in the view
  uint32_t stream = 0;          // peer -> peer: which of the pair's streams
  Nonce nonce{};
};
struct Challenge {
  Nonce nonce{};
  Proof proof{};
};
struct ProofMsg {
  Proof proof{};
};
struct Verdict {
  bool accepted = false;
  std::string reason;  // one line; empty when accepted
};

// ---- membership ------------------------------------------------------------------------------
struct ViewMember {
  PeerId peer_id = kNoPeer;
  std::string address;  // "host:port" where the peer accepts mesh connections
  // A node of G > 1 local ranks: where local ranks 1..G-1 accept the connections of their ring
  // (local rank r of every node all-reduces shard r, train/local_ranks.cpp); empty: G = 1.
  std::vector<std::string> rank_addresses = {};
  bool operator==(const ViewMember&) const = default;
};
// A membership view: the members in rank order. Epoch 0 is "no view yet". The epoch changes
// with the member list; round counts the barriers completed within the epoch (0 for a view
// pushed after a removal, then 1, 2, ...), so that every barrier starts a fresh, agreed
// numbering of operations: an operation is named (epoch, round << 32 | sequence number).
struct View {
  uint64_t epoch = 0;
  uint64_t round = 0;
  std::vector<ViewMember> members;
  bool operator==(const View&) const = default;
};

struct C2M_Join {
  PeerId previous_peer_id = kNoPeer;  // set when re-registering (e.g. after a coordinator restart)
  std::string listen_address;
  View last_view;                     // the view this peer holds (epoch 0: none)
  // The last final status this peer received (op_id 0: none), so that a restarted coordinator
  // learns the outcome of an operation that some members committed and others still wait for.
  uint64_t last_final_epoch = 0;
  uint64_t last_final_op_id = 0;
  bool last_final_ok = false;
  std::vector<std::string> rank_addresses = {};  // see ViewMember
  bool operator==(const C2M_Join&) const = default;
};
struct C2M_Heartbeat {
  bool operator==(const C2M_Heartbeat&) const = default;
};
// Barrier request: "I am ready for the next view". min_members: do not complete the barrier
// before the new view would hold at least this many peers (bootstrap of a run of known size).
struct C2M_UpdateTopology {
  uint64_t epoch = 0;  // the epoch of the view the peer holds
  uint32_t min_members = 0;
  // false: complete this barrier without admitting joiners (they wait for the next one); a
  // trainer retrying an operation mid-round uses it, since a joiner has nothing to contribute yet.
  bool admit_joiners = true;
  bool operator==(const C2M_UpdateTopology&) const = default;
};
struct C2M_Leave {
  bool operator==(const C2M_Leave&) const = default;
};
struct C2M_OpBegin {
  uint64_t epoch = 0;
  uint64_t op_id = 0;
  bool operator==(const C2M_OpBegin&) const = default;
};
// A member's local outcome: ok = it holds the result and waits for the final status.
struct C2M_OpResult {
  uint64_t epoch = 0;
  uint64_t op_id = 0;
  bool ok = false;
  std::string detail;
  bool operator==(const C2M_OpResult&) const = default;
};
// Shared-state sync (an operation like an all-reduce, named by (epoch, op_id), ending with one
// M2C_OpFinal): a member's per-buffer digests. report.peer is not on the wire (the coordinator
// knows who sent it). Names sorted and unique, at most kMaxSyncBuffers of at most
// kMaxBufferNameBytes each (checked by decode, and by the sender: sync_report_fits()).
struct C2M_SyncReport {
  uint64_t epoch = 0;
  uint64_t op_id = 0;
  PeerReport report;
  bool operator==(const C2M_SyncReport& o) const {
    return epoch == o.epoch && op_id == o.op_id && report.revision == o.report.revision &&
           report.votes == o.report.votes && report.pulls == o.report.pulls && report.buffers == o.report.buffers;
  }
};
// True if `report` can be sent as a C2M_SyncReport; else *why says which bound it breaks.
bool sync_report_fits(const PeerReport& report, std::string* why);
struct M2C_Welcome {
  PeerId peer_id = kNoPeer;
  uint32_t heartbeat_interval_ms = 0;
  uint32_t heartbeat_timeout_ms = 0;
  bool operator==(const M2C_Welcome&) const = default;
};
// barrier = true: the answer to C2M_UpdateTopology (the barrier completed); false: a view
// pushed because a member was removed (adopt it at the next update_topology).
struct M2C_View {
  View view;
  bool barrier = false;
  // barrier = true: joiners that were at this barrier but not admitted, because a member asked
  // for none (admit_joiners = false). The same number reaches every member of the barrier, so
  // they may decide alike to finish what is in flight and meet again, admitting them.
  uint32_t joiners_waiting = 0;
  bool operator==(const M2C_View&) const = default;
};
// The one final status of an operation: ok only if every member of its epoch reported ok.
struct M2C_OpFinal {
  uint64_t epoch = 0;
  uint64_t op_id = 0;
  bool ok = false;
  std::string detail;
  bool operator==(const M2C_OpFinal&) const = default;
};

// The election's outcome, sent to every member once all members of the epoch reported:
// holders are the coordinator's peer ids (ascending); on the wire each distinct holder set is
// sent once and buffers refer to it by index, so the size grows with buffers + members. Then the
// peers that keep their own state (ascending).
struct M2C_SyncElected {
  uint64_t epoch = 0;
  uint64_t op_id = 0;
  ElectedHashes elected;
  bool operator==(const M2C_SyncElected& o) const;
};

using ControlMessage =
    std::variant<Hello, Challenge, ProofMsg, Verdict, C2M_Join, C2M_Heartbeat, C2M_UpdateTopology, C2M_Leave,
                 C2M_OpBegin, C2M_OpResult, M2C_Welcome, M2C_View, M2C_OpFinal, C2M_SyncReport, M2C_SyncElected>;

// Payload bytes (no frame header).
std::vector<std::byte> encode_message(const ControlMessage& message);
// Frame header + payload.
std::vector<std::byte> encode_frame(const ControlMessage& message);
// Decodes one payload. Errors are one line and say what is wrong ("C2M_Join: truncated").
Result<ControlMessage> decode_message(std::span<const std::byte> payload);
const char* message_name(const ControlMessage& message);

// Incremental frame splitter for non-blocking sockets: feed() bytes as they arrive, then
// next() whole payloads. A bad magic or an oversized length is sticky: error() says why and
// the connection must be closed.
class FrameReader {
 public:
  explicit FrameReader(size_t max_payload_bytes = kMaxControlMessageBytes) : max_payload_bytes_(max_payload_bytes) {}
  void feed(std::span<const std::byte> bytes);
  // True and *payload filled if a whole frame is buffered.
  bool next(std::vector<std::byte>* payload);
  bool failed() const { return !error_.empty(); }
  const std::string& error() const { return error_; }
  // Bytes still missing to complete the next frame (at least 1): a blocking reader asks for no
  // more than this, so that it never swallows bytes that follow the frame on the socket.
  size_t wanted() const;

 private:
  size_t max_payload_bytes_;
  std::vector<std::byte> buffer_;
  size_t consumed_ = 0;
  std::string error_;
};

// ---- authentication ------------------------------------------------------------------------
Nonce random_nonce();
Proof hmac_proof(const std::string& token, char side, std::span<const std::byte> hello_payload, const Nonce& nonce_a);
bool proofs_equal(const Proof& a, const Proof& b);  // constant time

// Reads a token file: its contents with trailing whitespace removed; refuses an empty one.
Result<std::string> read_token_file(const std::string& path);

// The handshake as two small state machines (events in, frames out), so that blocking callers
// (peers) and the non-blocking coordinator drive the same code.
class ClientHandshake {
 public:
  ClientHandshake(std::string token, Hello hello);
  std::vector<std::byte> start();  // the Hello frame to send
  // Feed each received payload. Returns a frame to send (possibly empty). After done(),
  // status() says whether the acceptor accepted us (with its reason if not).
  std::vector<std::byte> on_payload(std::span<const std::byte> payload);
  bool done() const { return done_; }
  const Status& status() const { return status_; }

 private:
  std::string token_;
  Hello hello_;
  std::vector<std::byte> hello_payload_;
  bool got_challenge_ = false;
  bool server_proof_ok_ = false;
  bool done_ = false;
  Status status_;
};

class ServerHandshake {
 public:
  // check(hello): empty if the hello is acceptable, else the one-line reason to refuse it
  // (e.g. the epoch differs). Version is checked before.
  using HelloCheck = std::string (*)(const Hello& hello, const void* context);
  ServerHandshake(std::string token, HelloCheck check = nullptr, const void* context = nullptr);
  // Feed each received payload; returns frames to send. After done(), status() is ok when the
  // connector proved the token; then hello() is what it said.
  std::vector<std::byte> on_payload(std::span<const std::byte> payload);
  bool done() const { return done_; }
  const Status& status() const { return status_; }
  const Hello& hello() const { return hello_; }

 private:
  std::vector<std::byte> refuse(std::string reason, std::string hint);

  std::string token_;
  HelloCheck check_;
  const void* context_;
  Hello hello_;
  std::vector<std::byte> hello_payload_;
  Nonce nonce_{};
  bool got_hello_ = false;
  bool done_ = false;
  Status status_;
};

}  // namespace meridian::net::membership
