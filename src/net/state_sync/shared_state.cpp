// SharedState storage, digests and the election; the rules are in shared_state.h.
#include "net/state_sync/shared_state.h"

#include <algorithm>
#include <map>
#include <optional>
#include <tuple>

#include "core/assert.h"

namespace meridian::net {

const char* buffer_dtype_name(BufferDtype dtype) {
  switch (dtype) {
    case BufferDtype::kBytes: return "bytes";
    case BufferDtype::kF32: return "f32";
    case BufferDtype::kF16: return "f16";
    case BufferDtype::kBf16: return "bf16";
    case BufferDtype::kI64: return "i64";
    case BufferDtype::kI32: return "i32";
    case BufferDtype::kU8: return "u8";
  }
  return "unknown";
}

// ---- ElectedHashes ---------------------------------------------------------------------------

bool ElectedHashes::keeps_own(PeerId peer) const { return std::ranges::binary_search(keep_own, peer); }

std::vector<size_t> ElectedHashes::missing_on(PeerId peer) const {
  std::vector<size_t> missing;
  if (keeps_own(peer)) return missing;
  for (size_t b = 0; b < buffers.size(); ++b) {
    const auto& h = buffers[b].holders;
    if (!std::binary_search(h.begin(), h.end(), peer)) missing.push_back(b);
  }
  return missing;
}

uint64_t ElectedHashes::bytes_missing_on(PeerId peer) const {
  uint64_t total = 0;
  for (size_t b : missing_on(peer)) total += buffers[b].bytes;
  return total;
}

// ---- Election ----------------------------------------------------------------------------------

namespace {

// A candidate: its holders (ascending, since reports are visited in peer order).
struct Candidate {
  std::vector<PeerId> holders;
};

// Most holders wins; a tie goes to the candidate with the lowest first holder.
bool beats(const std::vector<PeerId>& a, const std::vector<PeerId>& b) {
  if (a.size() != b.size()) return a.size() > b.size();
  if (a.empty()) return false;
  return a.front() < b.front();
}

}  // namespace

ElectedHashes elect(const std::vector<PeerReport>& reports_in) {
  // Visit reports in ascending peer id so every holder list comes out sorted.
  std::vector<const PeerReport*> reports;
  for (const PeerReport& r : reports_in) reports.push_back(&r);
  std::sort(reports.begin(), reports.end(), [](const PeerReport* a, const PeerReport* b) { return a->peer < b->peer; });
  for (size_t i = 0; i < reports.size(); ++i) {
    MERIDIAN_ASSERT(i == 0 || reports[i - 1]->peer != reports[i]->peer, "peer {} reported twice", reports[i]->peer);
    const auto& bufs = reports[i]->buffers;
    for (size_t j = 1; j < bufs.size(); ++j) {
      MERIDIAN_ASSERT(bufs[j - 1].name < bufs[j].name, "peer {}: buffer names not sorted/unique at '{}'",
                      reports[i]->peer, bufs[j].name);
    }
  }

  ElectedHashes elected;
  for (const PeerReport* r : reports) {
    if (!r->pulls) elected.keep_own.push_back(r->peer);
  }
  // Progress first: the newest revision among the voters is elected, and only the voters at
  // that revision vote on the buffers (a voter behind them holds an older state, not a rival).
  // A non-voter holding a strictly newer state than every voter's (a member back after an
  // eviction while the voters started over or fell behind) carries the run's progress: the
  // holders of the newest such revision vote instead.
  bool any_voter = false;
  for (const PeerReport* r : reports) {
    if (!r->votes) continue;
    elected.revision = any_voter ? std::max(elected.revision, r->revision) : r->revision;
    any_voter = true;
  }
  bool newer_holders = false;
  for (const PeerReport* r : reports) {
    if (r->votes || r->buffers.empty()) continue;
    if ((!any_voter && !newer_holders) || r->revision > elected.revision) {
      elected.revision = r->revision;
      newer_holders = true;
    }
  }
  auto votes_on_buffers = [&](const PeerReport* r) {
    return r->revision == elected.revision && (newer_holders ? !r->buffers.empty() : r->votes);
  };

  // Buffers: every name any voter reports, in name order.
  using VersionKey = std::tuple<uint8_t, uint64_t, uint64_t, uint64_t>;  // dtype, bytes, hash.hi, hash.lo
  std::map<std::string, std::map<VersionKey, std::vector<PeerId>>> versions;
  for (const PeerReport* r : reports) {
    if (!votes_on_buffers(r)) continue;
    for (const BufferDigest& d : r->buffers) {
      versions[d.name][VersionKey{static_cast<uint8_t>(d.dtype), d.bytes, d.hash.hi, d.hash.lo}].push_back(r->peer);
    }
  }
  for (const auto& [name, by_version] : versions) {
    std::vector<PeerId> absent;
    for (const PeerReport* r : reports) {
      if (!votes_on_buffers(r)) continue;
      const bool has = std::ranges::binary_search(r->buffers, name, {}, &BufferDigest::name);
      if (!has) absent.push_back(r->peer);
    }
    const std::vector<PeerId>* best = &absent;
    std::optional<VersionKey> best_key;
    for (const auto& [key, holders] : by_version) {
      if (beats(holders, *best)) {
        best = &holders;
        best_key = key;
      }
    }
    if (!best_key) continue;  // the majority does not have it
    ElectedBuffer e;
    e.name = name;
    e.dtype = static_cast<BufferDtype>(std::get<0>(*best_key));
    e.bytes = std::get<1>(*best_key);
    e.hash = Hash128{std::get<2>(*best_key), std::get<3>(*best_key)};
    // Holders: every reporter with exactly this version, voter or not (a non-voter holds
    // nothing in practice, but a holder is a holder).
    for (const PeerReport* r : reports) {
      for (const BufferDigest& d : r->buffers) {
        if (d.name == name && d.dtype == e.dtype && d.bytes == e.bytes && d.hash == e.hash) e.holders.push_back(r->peer);
      }
    }
    elected.buffers.push_back(std::move(e));
  }
  // A fork: voters of the elected revision whose state is not the elected one.
  for (const PeerReport* r : reports) {
    if (!votes_on_buffers(r)) continue;
    bool same = r->buffers.size() == elected.buffers.size();
    for (size_t b = 0; same && b < elected.buffers.size(); ++b) {
      const ElectedBuffer& e = elected.buffers[b];
      const BufferDigest& d = r->buffers[b];
      same = d.name == e.name && d.dtype == e.dtype && d.bytes == e.bytes && d.hash == e.hash;
    }
    if (!same && r->pulls) elected.forked.push_back(r->peer);
  }
  return elected;
}

// ---- SharedState ----------------------------------------------------------------------------------

std::vector<SharedState::Buffer>::iterator SharedState::lower_bound(const std::string& name) {
  return std::lower_bound(buffers_.begin(), buffers_.end(), name,
                          [](const Buffer& b, const std::string& n) { return b.name < n; });
}

void SharedState::put(const std::string& name, BufferDtype dtype, std::span<const std::byte> bytes) {
  put(name, dtype, std::vector<std::byte>(bytes.begin(), bytes.end()));
}

void SharedState::put(const std::string& name, BufferDtype dtype, std::vector<std::byte>&& bytes) {
  auto it = lower_bound(name);
  if (it != buffers_.end() && it->name == name) {
    it->dtype = dtype;
    it->bytes = std::move(bytes);
    return;
  }
  buffers_.insert(it, Buffer{name, dtype, std::move(bytes)});
}

bool SharedState::erase(const std::string& name) {
  auto it = lower_bound(name);
  if (it == buffers_.end() || it->name != name) return false;
  buffers_.erase(it);
  return true;
}

const SharedState::Buffer* SharedState::find(const std::string& name) const {
  auto it = std::lower_bound(buffers_.begin(), buffers_.end(), name,
                             [](const Buffer& b, const std::string& n) { return b.name < n; });
  return it != buffers_.end() && it->name == name ? &*it : nullptr;
}

std::span<std::byte> SharedState::data(const std::string& name) {
  auto it = lower_bound(name);
  MERIDIAN_ASSERT(it != buffers_.end() && it->name == name, "no shared buffer '{}'", name);
  return it->bytes;
}

uint64_t SharedState::total_bytes() const {
  uint64_t total = 0;
  for (const Buffer& b : buffers_) total += b.bytes.size();
  return total;
}

PeerReport SharedState::report(PeerId self) const {
  PeerReport r;
  r.peer = self;
  r.revision = revision_;
  r.votes = !buffers_.empty();
  r.pulls = pulls_;
  for (const Buffer& b : buffers_) {
    r.buffers.push_back(BufferDigest{b.name, b.dtype, b.bytes.size(), xxh3_128(b.bytes.data(), b.bytes.size())});
  }
  return r;
}

Hash128 SharedState::state_hash() const {
  Hasher128 h;
  h.update(&revision_, sizeof(revision_));
  for (const Buffer& b : buffers_) {
    const uint64_t name_size = b.name.size(), size = b.bytes.size();
    const uint8_t dtype = static_cast<uint8_t>(b.dtype);
    h.update(&name_size, sizeof(name_size));
    h.update(b.name);
    h.update(&dtype, 1);
    h.update(&size, sizeof(size));
    h.update(b.bytes.data(), b.bytes.size());
  }
  return h.digest();
}

}  // namespace meridian::net
