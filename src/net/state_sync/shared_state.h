// Shared state: a named set of byte buffers with a revision (the DiLoCo outer weights and the
// outer optimizer's state, or anything a joiner must receive bit-exact), the per-buffer
// XXH3-128 digests a peer reports, and the pure election that picks, per buffer, the version
// the majority holds.
//
// Election (elect()): progress first, then the majority. The voters are the reports with
// `votes` set (a fresh joiner, which holds nothing yet, does not vote: otherwise in a view of two
// an empty joiner could tie with, and win against, the only peer that has the state; nor does a
// peer back after an eviction until it has synced, see coord/coordinator_state.h). The revision
// is the state's progress (DiLoCo: the outer round): the newest revision any voter reports is
// elected, so a state that is behind another voter's never wins, whatever the votes. Progress
// first holds over non-voters too: when a non-voter holds a non-empty state strictly newer than
// every voter's (or nobody votes), the newest revision among the non-empty states is elected and
// its holders vote (a member back after an eviction, while the voters started over or fell
// behind, carries the run's progress; an empty joiner never votes). Only the
// voters at that revision vote on the buffers: for every buffer name one of them reports, the
// candidates are the distinct (dtype, bytes, hash) versions plus "absent" (those voters without
// the name). The winner is the candidate with the most voters; a tie goes to the candidate whose
// lowest holding peer id is the lowest (ids are unique, so this always decides). A buffer whose
// winner is "absent" is not part of the elected state (peers holding it drop it at the next
// sync). Voters of the elected revision whose state differs from the elected one are a fork
// (ElectedHashes::forked): two histories with the same progress; the rule above resolves it
// deterministically and the callers report it loudly. Every peer (and the coordinator) that
// runs elect() on the same reports gets the same ElectedHashes.
//
// Keeping one's own (PeerReport::pulls = false, SharedState::set_pulls): a peer that only
// offers its state - it votes and serves as usual but downloads nothing and keeps its buffers
// and revision as they are. The elected hashes list such peers (keep_own), so every member plans
// the same transfers. Used where each peer legitimately holds its own version and only fresh
// peers need one (a joiner's copy of some member's inner optimizer state).
//
// Deliberately not here: any I/O (state_sync.h moves the bytes), any knowledge of tensors
// (buffers are bytes tagged with a dtype, so this layer stays torch-free), and zero-copy views
// of the caller's memory (the state owns its bytes; the trainer copies tensors in and out).
// Invariant: buffers() is sorted by name, names are unique.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/hash.h"
#include "net/transport/transport.h"

namespace meridian::net {

// What the bytes of a buffer are, so that two versions that differ only in their type do not
// compare equal. The election treats it as part of the version; nothing here interprets it.
enum class BufferDtype : uint8_t { kBytes = 0, kF32 = 1, kF16 = 2, kBf16 = 3, kI64 = 4, kI32 = 5, kU8 = 6 };
const char* buffer_dtype_name(BufferDtype dtype);

// One buffer as a peer reports it: 4 + name + 1 + 8 + 16 bytes on the wire (the coordinator's
// protocol carries it; this file only defines the values).
struct BufferDigest {
  std::string name;
  BufferDtype dtype = BufferDtype::kBytes;
  uint64_t bytes = 0;
  Hash128 hash;  // xxh3_128 of the buffer's bytes, seed 0
  bool operator==(const BufferDigest&) const = default;
};

struct PeerReport {
  PeerId peer = kNoPeer;
  uint64_t revision = 0;
  bool votes = true;                  // false for a fresh joiner (see the election above)
  bool pulls = true;                  // false: downloads nothing, keeps its own (see above)
  std::vector<BufferDigest> buffers;  // sorted by name, unique names
};

// The elected version of one buffer and the peers (ids ascending) that hold exactly it.
struct ElectedBuffer {
  std::string name;
  BufferDtype dtype = BufferDtype::kBytes;
  uint64_t bytes = 0;
  Hash128 hash;
  std::vector<PeerId> holders;
};

struct ElectedHashes {
  uint64_t revision = 0;
  std::vector<ElectedBuffer> buffers;  // sorted by name
  std::vector<PeerId> keep_own;        // peers that download nothing (pulls = false), ascending
  // Voters of the elected revision that hold another state (a fork), ascending. Not on the
  // wire: the coordinator reports it; a member sees it as downloading at its own revision.
  std::vector<PeerId> forked;
  bool keeps_own(PeerId peer) const;
  // The buffers `peer` lacks or holds in another version (indices into buffers); none for a
  // peer that keeps its own.
  std::vector<size_t> missing_on(PeerId peer) const;
  uint64_t bytes_missing_on(PeerId peer) const;
};

// Pure: see the election rules in the file comment. Asserts that peer ids are unique and each
// report's buffer names are sorted and unique (a caller bug otherwise).
ElectedHashes elect(const std::vector<PeerReport>& reports);

class SharedState {
 public:
  struct Buffer {
    std::string name;
    BufferDtype dtype = BufferDtype::kBytes;
    std::vector<std::byte> bytes;
  };

  uint64_t revision() const { return revision_; }
  void set_revision(uint64_t revision) { revision_ = revision; }

  // Inserts or replaces the buffer `name` with a copy of `bytes`.
  void put(const std::string& name, BufferDtype dtype, std::span<const std::byte> bytes);
  // Inserts or replaces, taking the storage (no copy).
  void put(const std::string& name, BufferDtype dtype, std::vector<std::byte>&& bytes);
  bool erase(const std::string& name);
  const Buffer* find(const std::string& name) const;
  // Mutable bytes of an existing buffer (asserts that it exists).
  std::span<std::byte> data(const std::string& name);
  const std::vector<Buffer>& buffers() const { return buffers_; }
  uint64_t total_bytes() const;

  // false: this peer offers its buffers but downloads nothing at a sync (see keep_own above).
  bool pulls() const { return pulls_; }
  void set_pulls(bool pulls) { pulls_ = pulls; }

  // Hashes every buffer. votes = false when the state is empty (a fresh joiner).
  PeerReport report(PeerId self) const;
  // One hash over the revision and every buffer's name, dtype, size and bytes: equal states
  // have equal hashes (what the tests and the simulation compare).
  Hash128 state_hash() const;

 private:
  std::vector<Buffer>::iterator lower_bound(const std::string& name);

  uint64_t revision_ = 0;
  bool pulls_ = true;
  std::vector<Buffer> buffers_;  // sorted by name
};

}  // namespace meridian::net
