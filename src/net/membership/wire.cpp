#include "net/membership/wire.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>

#include "core/assert.h"

namespace meridian::net::membership {

namespace {

// Little-endian writer and bounds-checked reader for payloads.
class Writer {
 public:
  explicit Writer(MsgType type) { u8(static_cast<uint8_t>(type)); }
  void u8(uint8_t v) { bytes_.push_back(std::byte{v}); }
  void u16(uint16_t v) { raw(&v, 2); }
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void str(const std::string& s) {
    MERIDIAN_ASSERT(s.size() <= kMaxStringBytes, "string of {} bytes > {}", s.size(), kMaxStringBytes);
    u32(static_cast<uint32_t>(s.size()));
    raw(s.data(), s.size());
  }
  template <size_t N>
  void arr(const std::array<uint8_t, N>& a) { raw(a.data(), N); }
  void strings(const std::vector<std::string>& v) {
    MERIDIAN_ASSERT(v.size() <= kMaxRankAddresses, "{} rank addresses", v.size());
    u32(static_cast<uint32_t>(v.size()));
    for (const std::string& s : v) str(s);
  }
  void view(const View& v) {
    MERIDIAN_ASSERT(v.members.size() <= kMaxViewMembers, "view of {} members", v.members.size());
    u64(v.epoch);
    u64(v.round);
    u32(static_cast<uint32_t>(v.members.size()));
    for (const ViewMember& m : v.members) {
      u32(m.peer_id);
      str(m.address);
      strings(m.rank_addresses);
    }
  }
  void digest(const BufferDigest& d) {
    MERIDIAN_ASSERT(d.name.size() <= kMaxBufferNameBytes, "buffer name of {} bytes", d.name.size());
    str(d.name);
    u8(static_cast<uint8_t>(d.dtype));
    u64(d.bytes);
    u64(d.hash.hi);
    u64(d.hash.lo);
  }
  std::vector<std::byte> take() { return std::move(bytes_); }

 private:
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const std::byte*>(p);
    bytes_.insert(bytes_.end(), b, b + n);
  }
  std::vector<std::byte> bytes_;
};

class Reader {
 public:
  explicit Reader(std::span<const std::byte> bytes) : bytes_(bytes) {}
  bool ok() const { return ok_; }
  bool at_end() const { return pos_ == bytes_.size(); }
  uint8_t u8() { uint8_t v = 0; raw(&v, 1); return v; }
  uint16_t u16() { uint16_t v = 0; raw(&v, 2); return v; }
  uint32_t u32() { uint32_t v = 0; raw(&v, 4); return v; }
  uint64_t u64() { uint64_t v = 0; raw(&v, 8); return v; }
  std::string str() {
    const uint32_t n = u32();
    if (!ok_ || n > kMaxStringBytes || n > bytes_.size() - pos_) {
      ok_ = false;
      return {};
    }
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), n);
    pos_ += n;
    return s;
  }
  template <size_t N>
  void arr(std::array<uint8_t, N>* a) { raw(a->data(), N); }
  std::vector<std::string> strings() {
    const uint32_t n = u32();
    std::vector<std::string> v;
    if (!ok_ || n > kMaxRankAddresses) {
      ok_ = false;
      return v;
    }
    for (uint32_t i = 0; i < n && ok_; ++i) v.push_back(str());
    return v;
  }
  View view() {
    View v;
    v.epoch = u64();
    v.round = u64();
    const uint32_t n = u32();
    if (!ok_ || n > kMaxViewMembers) {
      ok_ = false;
      return v;
    }
    for (uint32_t i = 0; i < n && ok_; ++i) {
      ViewMember m;
      m.peer_id = u32();
      m.address = str();
      m.rank_addresses = strings();
      v.members.push_back(std::move(m));
    }
    return v;
  }
  // n peer ids (the caller bounds n), which must be ascending and unique.
  std::vector<PeerId> ascending_ids(uint32_t n) {
    std::vector<PeerId> ids;
    for (uint32_t i = 0; i < n && ok_; ++i) {
      ids.push_back(u32());
      if (i > 0 && ids[i - 1] >= ids[i]) ok_ = false;
    }
    return ids;
  }
  // A buffer digest; refuses names over kMaxBufferNameBytes and unknown dtypes.
  BufferDigest digest() {
    BufferDigest d;
    d.name = str();
    const uint8_t dtype = u8();
    if (d.name.size() > kMaxBufferNameBytes || dtype > static_cast<uint8_t>(BufferDtype::kU8)) ok_ = false;
    d.dtype = static_cast<BufferDtype>(dtype);
    d.bytes = u64();
    d.hash.hi = u64();
    d.hash.lo = u64();
    return d;
  }
  void invalidate() { ok_ = false; }

 private:
  void raw(void* p, size_t n) {
    if (!ok_ || n > bytes_.size() - pos_) {
      ok_ = false;
      std::memset(p, 0, n);
      return;
    }
    std::memcpy(p, bytes_.data() + pos_, n);
    pos_ += n;
  }
  std::span<const std::byte> bytes_;
  size_t pos_ = 0;
  bool ok_ = true;
};

struct Encoder {
  std::vector<std::byte> operator()(const Hello& m) const {
    Writer w(MsgType::kHello);
    w.u16(m.version);
    w.u8(static_cast<uint8_t>(m.role));
    w.u64(m.epoch);
    w.u32(m.from_peer);
    w.u32(m.stream);
    w.arr(m.nonce);
    return w.take();
  }
  std::vector<std::byte> operator()(const Challenge& m) const {
    Writer w(MsgType::kChallenge);
    w.arr(m.nonce);
    w.arr(m.proof);
    return w.take();
  }
  std::vector<std::byte> operator()(const ProofMsg& m) const {
    Writer w(MsgType::kProof);
    w.arr(m.proof);
    return w.take();
  }
  std::vector<std::byte> operator()(const Verdict& m) const {
    Writer w(MsgType::kVerdict);
    w.u8(m.accepted ? 1 : 0);
    w.str(m.reason);
    return w.take();
  }
  std::vector<std::byte> operator()(const C2M_Join& m) const {
    Writer w(MsgType::kC2M_Join);
    w.u32(m.previous_peer_id);
    w.str(m.listen_address);
    w.view(m.last_view);
    w.u64(m.last_final_epoch);
    w.u64(m.last_final_op_id);
    w.u8(m.last_final_ok ? 1 : 0);
    w.strings(m.rank_addresses);
    return w.take();
  }
  std::vector<std::byte> operator()(const C2M_Heartbeat&) const { return Writer(MsgType::kC2M_Heartbeat).take(); }
  std::vector<std::byte> operator()(const C2M_UpdateTopology& m) const {
    Writer w(MsgType::kC2M_UpdateTopology);
    w.u64(m.epoch);
    w.u32(m.min_members);
    w.u8(m.admit_joiners ? 1 : 0);
    return w.take();
  }
  std::vector<std::byte> operator()(const C2M_Leave&) const { return Writer(MsgType::kC2M_Leave).take(); }
  std::vector<std::byte> operator()(const C2M_OpBegin& m) const {
    Writer w(MsgType::kC2M_OpBegin);
    w.u64(m.epoch);
    w.u64(m.op_id);
    return w.take();
  }
  std::vector<std::byte> operator()(const C2M_OpResult& m) const {
    Writer w(MsgType::kC2M_OpResult);
    w.u64(m.epoch);
    w.u64(m.op_id);
    w.u8(m.ok ? 1 : 0);
    w.str(m.detail);
    return w.take();
  }
  std::vector<std::byte> operator()(const C2M_SyncReport& m) const {
    MERIDIAN_ASSERT(m.report.buffers.size() <= kMaxSyncBuffers, "sync report of {} buffers", m.report.buffers.size());
    Writer w(MsgType::kC2M_SyncReport);
    w.u64(m.epoch);
    w.u64(m.op_id);
    w.u64(m.report.revision);
    w.u8((m.report.votes ? 1 : 0) | (m.report.pulls ? 0 : 2));
    w.u32(static_cast<uint32_t>(m.report.buffers.size()));
    for (const BufferDigest& d : m.report.buffers) w.digest(d);
    return w.take();
  }
  std::vector<std::byte> operator()(const M2C_SyncElected& m) const {
    MERIDIAN_ASSERT(m.elected.buffers.size() <= kMaxSyncBuffers, "{} elected buffers", m.elected.buffers.size());
    std::vector<std::vector<PeerId>> sets;  // distinct holder sets, in order of first use
    std::vector<uint32_t> set_of(m.elected.buffers.size());
    for (size_t b = 0; b < m.elected.buffers.size(); ++b) {
      const auto& h = m.elected.buffers[b].holders;
      auto it = std::find(sets.begin(), sets.end(), h);
      if (it == sets.end()) it = sets.insert(sets.end(), h);
      set_of[b] = static_cast<uint32_t>(it - sets.begin());
    }
    Writer w(MsgType::kM2C_SyncElected);
    w.u64(m.epoch);
    w.u64(m.op_id);
    w.u64(m.elected.revision);
    w.u32(static_cast<uint32_t>(sets.size()));
    for (const auto& set : sets) {
      MERIDIAN_ASSERT(set.size() <= kMaxViewMembers, "holder set of {}", set.size());
      w.u32(static_cast<uint32_t>(set.size()));
      for (PeerId p : set) w.u32(p);
    }
    w.u32(static_cast<uint32_t>(m.elected.buffers.size()));
    for (size_t b = 0; b < m.elected.buffers.size(); ++b) {
      const ElectedBuffer& e = m.elected.buffers[b];
      w.digest(BufferDigest{e.name, e.dtype, e.bytes, e.hash});
      w.u32(set_of[b]);
    }
    MERIDIAN_ASSERT(m.elected.keep_own.size() <= kMaxViewMembers, "{} peers keep their own", m.elected.keep_own.size());
    w.u32(static_cast<uint32_t>(m.elected.keep_own.size()));
    for (PeerId p : m.elected.keep_own) w.u32(p);
    return w.take();
  }
  std::vector<std::byte> operator()(const M2C_Welcome& m) const {
    Writer w(MsgType::kM2C_Welcome);
    w.u32(m.peer_id);
    w.u32(m.heartbeat_interval_ms);
    w.u32(m.heartbeat_timeout_ms);
    return w.take();
  }
  std::vector<std::byte> operator()(const M2C_View& m) const {
    Writer w(MsgType::kM2C_View);
    w.view(m.view);
    w.u8(m.barrier ? 1 : 0);
    w.u32(m.joiners_waiting);
    return w.take();
  }
  std::vector<std::byte> operator()(const M2C_OpFinal& m) const {
    Writer w(MsgType::kM2C_OpFinal);
    w.u64(m.epoch);
    w.u64(m.op_id);
    w.u8(m.ok ? 1 : 0);
    w.str(m.detail);
    return w.take();
  }
};

struct Namer {
  const char* operator()(const Hello&) const { return "Hello"; }
  const char* operator()(const Challenge&) const { return "Challenge"; }
  const char* operator()(const ProofMsg&) const { return "Proof"; }
  const char* operator()(const Verdict&) const { return "Verdict"; }
  const char* operator()(const C2M_Join&) const { return "C2M_Join"; }
  const char* operator()(const C2M_Heartbeat&) const { return "C2M_Heartbeat"; }
  const char* operator()(const C2M_UpdateTopology&) const { return "C2M_UpdateTopology"; }
  const char* operator()(const C2M_Leave&) const { return "C2M_Leave"; }
  const char* operator()(const C2M_OpBegin&) const { return "C2M_OpBegin"; }
  const char* operator()(const C2M_OpResult&) const { return "C2M_OpResult"; }
  const char* operator()(const M2C_Welcome&) const { return "M2C_Welcome"; }
  const char* operator()(const M2C_View&) const { return "M2C_View"; }
  const char* operator()(const M2C_OpFinal&) const { return "M2C_OpFinal"; }
  const char* operator()(const C2M_SyncReport&) const { return "C2M_SyncReport"; }
  const char* operator()(const M2C_SyncElected&) const { return "M2C_SyncElected"; }
};

template <typename T>
Result<ControlMessage> finish(Reader& r, T message, const char* name) {
  if (!r.ok()) return Status::error(std::string(name) + ": truncated or a length out of bounds");
  if (!r.at_end()) return Status::error(std::string(name) + ": trailing bytes");
  return ControlMessage(std::move(message));
}

bool names_sorted_unique(const std::vector<std::string>& names) {
  for (size_t i = 1; i < names.size(); ++i) {
    if (!(names[i - 1] < names[i])) return false;
  }
  return true;
}

}  // namespace

bool M2C_SyncElected::operator==(const M2C_SyncElected& o) const {
  if (epoch != o.epoch || op_id != o.op_id || elected.revision != o.elected.revision ||
      elected.buffers.size() != o.elected.buffers.size() || elected.keep_own != o.elected.keep_own) {
    return false;
  }
  for (size_t i = 0; i < elected.buffers.size(); ++i) {
    const ElectedBuffer& a = elected.buffers[i];
    const ElectedBuffer& b = o.elected.buffers[i];
    if (a.name != b.name || a.dtype != b.dtype || a.bytes != b.bytes || !(a.hash == b.hash) || a.holders != b.holders) {
      return false;
    }
  }
  return true;
}

bool sync_report_fits(const PeerReport& report, std::string* why) {
  if (report.buffers.size() > kMaxSyncBuffers) {
    *why = std::to_string(report.buffers.size()) + " buffers > " + std::to_string(kMaxSyncBuffers);
    return false;
  }
  for (size_t i = 0; i < report.buffers.size(); ++i) {
    const std::string& name = report.buffers[i].name;
    if (name.size() > kMaxBufferNameBytes) {
      *why = "buffer name '" + name.substr(0, 32) + "...' of " + std::to_string(name.size()) + " bytes > " +
             std::to_string(kMaxBufferNameBytes);
      return false;
    }
    if (i > 0 && !(report.buffers[i - 1].name < name)) {
      *why = "buffer names not sorted and unique at '" + name + "'";
      return false;
    }
  }
  return true;
}

std::vector<std::byte> encode_message(const ControlMessage& message) { return std::visit(Encoder{}, message); }

std::vector<std::byte> encode_frame(const ControlMessage& message) {
  std::vector<std::byte> payload = encode_message(message);
  MERIDIAN_ASSERT(payload.size() <= kMaxControlMessageBytes, "control message of {} bytes", payload.size());
  std::vector<std::byte> frame(kFrameHeaderBytes + payload.size());
  const uint32_t header[2] = {kControlFrameMagic, static_cast<uint32_t>(payload.size())};
  std::memcpy(frame.data(), header, sizeof(header));
  if (!payload.empty()) std::memcpy(frame.data() + kFrameHeaderBytes, payload.data(), payload.size());
  return frame;
}

const char* message_name(const ControlMessage& message) { return std::visit(Namer{}, message); }

Result<ControlMessage> decode_message(std::span<const std::byte> payload) {
  if (payload.empty()) return Status::error("empty control message");
  Reader r(payload);
  const auto type = static_cast<MsgType>(r.u8());
  switch (type) {
    case MsgType::kHello: {
      Hello m;
      m.version = r.u16();
      // A hello of another version is decoded only as far as its version, so that the
      // acceptor can refuse it with a readable reason.
      if (r.ok() && m.version != kProtocolVersion) return ControlMessage(m);
      const uint8_t role = r.u8();
      if (role != static_cast<uint8_t>(Role::kPeerToCoordinator) && role != static_cast<uint8_t>(Role::kPeerToPeer)) {
        if (r.ok()) return Status::error("Hello: unknown role " + std::to_string(role));
      }
      m.role = static_cast<Role>(role);
      m.epoch = r.u64();
      m.from_peer = r.u32();
      m.stream = r.u32();
      r.arr(&m.nonce);
      return finish(r, m, "Hello");
    }
    case MsgType::kChallenge: {
      Challenge m;
      r.arr(&m.nonce);
      r.arr(&m.proof);
      return finish(r, m, "Challenge");
    }
    case MsgType::kProof: {
      ProofMsg m;
      r.arr(&m.proof);
      return finish(r, m, "Proof");
    }
    case MsgType::kVerdict: {
      Verdict m;
      const uint8_t accepted = r.u8();
      if (accepted > 1 && r.ok()) return Status::error("Verdict: bad flag");
      m.accepted = accepted == 1;
      m.reason = r.str();
      return finish(r, m, "Verdict");
    }
    case MsgType::kC2M_Join: {
      C2M_Join m;
      m.previous_peer_id = r.u32();
      m.listen_address = r.str();
      m.last_view = r.view();
      m.last_final_epoch = r.u64();
      m.last_final_op_id = r.u64();
      const uint8_t ok = r.u8();
      if (ok > 1 && r.ok()) return Status::error("C2M_Join: bad flag");
      m.last_final_ok = ok == 1;
      m.rank_addresses = r.strings();
      return finish(r, m, "C2M_Join");
    }
    case MsgType::kC2M_Heartbeat:
      return finish(r, C2M_Heartbeat{}, "C2M_Heartbeat");
    case MsgType::kC2M_UpdateTopology: {
      C2M_UpdateTopology m;
      m.epoch = r.u64();
      m.min_members = r.u32();
      const uint8_t admit = r.u8();
      if (admit > 1 && r.ok()) return Status::error("C2M_UpdateTopology: bad flag");
      m.admit_joiners = admit == 1;
      return finish(r, m, "C2M_UpdateTopology");
    }
    case MsgType::kC2M_Leave:
      return finish(r, C2M_Leave{}, "C2M_Leave");
    case MsgType::kC2M_OpBegin: {
      C2M_OpBegin m;
      m.epoch = r.u64();
      m.op_id = r.u64();
      return finish(r, m, "C2M_OpBegin");
    }
    case MsgType::kC2M_OpResult: {
      C2M_OpResult m;
      m.epoch = r.u64();
      m.op_id = r.u64();
      const uint8_t ok = r.u8();
      if (ok > 1 && r.ok()) return Status::error("C2M_OpResult: bad flag");
      m.ok = ok == 1;
      m.detail = r.str();
      return finish(r, m, "C2M_OpResult");
    }
    case MsgType::kC2M_SyncReport: {
      C2M_SyncReport m;
      m.epoch = r.u64();
      m.op_id = r.u64();
      m.report.revision = r.u64();
      const uint8_t flags = r.u8();  // bit 0: votes, bit 1: keeps its own (does not pull)
      if (flags > 3 && r.ok()) return Status::error("C2M_SyncReport: bad flags");
      m.report.votes = (flags & 1) != 0;
      m.report.pulls = (flags & 2) == 0;
      const uint32_t n = r.u32();
      if (r.ok() && n > kMaxSyncBuffers) return Status::error("C2M_SyncReport: " + std::to_string(n) + " buffers");
      std::vector<std::string> names;
      for (uint32_t i = 0; i < n && r.ok(); ++i) {
        m.report.buffers.push_back(r.digest());
        names.push_back(m.report.buffers.back().name);
      }
      if (r.ok() && !names_sorted_unique(names)) return Status::error("C2M_SyncReport: buffer names not sorted and unique");
      return finish(r, m, "C2M_SyncReport");
    }
    case MsgType::kM2C_SyncElected: {
      M2C_SyncElected m;
      m.epoch = r.u64();
      m.op_id = r.u64();
      m.elected.revision = r.u64();
      const uint32_t set_count = r.u32();
      if (r.ok() && set_count > kMaxSyncBuffers) return Status::error("M2C_SyncElected: " + std::to_string(set_count) + " holder sets");
      std::vector<std::vector<PeerId>> sets;
      for (uint32_t s = 0; s < set_count && r.ok(); ++s) {
        const uint32_t k = r.u32();
        if (r.ok() && k > kMaxViewMembers) return Status::error("M2C_SyncElected: holder set of " + std::to_string(k));
        sets.push_back(r.ascending_ids(k));
      }
      const uint32_t n = r.u32();
      if (r.ok() && n > kMaxSyncBuffers) return Status::error("M2C_SyncElected: " + std::to_string(n) + " buffers");
      // Canonical form, as the encoder writes it: distinct sets, each used, numbered in order
      // of first use (so that decode and encode are inverses).
      std::vector<std::string> names;
      uint32_t sets_used = 0;
      for (uint32_t i = 0; i < n && r.ok(); ++i) {
        BufferDigest d = r.digest();
        const uint32_t set = r.u32();
        if (!r.ok() || set > sets_used || set >= sets.size()) {
          r.invalidate();
          break;
        }
        sets_used += set == sets_used ? 1 : 0;
        names.push_back(d.name);
        m.elected.buffers.push_back(ElectedBuffer{std::move(d.name), d.dtype, d.bytes, d.hash, sets[set]});
      }
      const uint32_t keep_own = r.u32();
      if (r.ok() && keep_own > kMaxViewMembers) return Status::error("M2C_SyncElected: " + std::to_string(keep_own) + " peers keep their own");
      m.elected.keep_own = r.ascending_ids(keep_own);
      if (r.ok() && sets_used != sets.size()) return Status::error("M2C_SyncElected: unused holder sets");
      if (r.ok() && std::set<std::vector<PeerId>>(sets.begin(), sets.end()).size() != sets.size()) {
        return Status::error("M2C_SyncElected: holder sets repeat");
      }
      if (r.ok() && !names_sorted_unique(names)) return Status::error("M2C_SyncElected: buffer names not sorted and unique");
      return finish(r, m, "M2C_SyncElected");
    }
    case MsgType::kM2C_Welcome: {
      M2C_Welcome m;
      m.peer_id = r.u32();
      m.heartbeat_interval_ms = r.u32();
      m.heartbeat_timeout_ms = r.u32();
      return finish(r, m, "M2C_Welcome");
    }
    case MsgType::kM2C_View: {
      M2C_View m;
      m.view = r.view();
      const uint8_t barrier = r.u8();
      if (barrier > 1 && r.ok()) return Status::error("M2C_View: bad flag");
      m.barrier = barrier == 1;
      m.joiners_waiting = r.u32();
      return finish(r, m, "M2C_View");
    }
    case MsgType::kM2C_OpFinal: {
      M2C_OpFinal m;
      m.epoch = r.u64();
      m.op_id = r.u64();
      const uint8_t ok = r.u8();
      if (ok > 1 && r.ok()) return Status::error("M2C_OpFinal: bad flag");
      m.ok = ok == 1;
      m.detail = r.str();
      return finish(r, m, "M2C_OpFinal");
    }
  }
  return Status::error("unknown control message type " + std::to_string(static_cast<unsigned>(type)));
}

// ---- FrameReader -----------------------------------------------------------------------------

void FrameReader::feed(std::span<const std::byte> bytes) {
  if (failed()) return;
  if (consumed_ > 0 && consumed_ == buffer_.size()) {
    buffer_.clear();
    consumed_ = 0;
  }
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
}

size_t FrameReader::wanted() const {
  const size_t have = buffer_.size() - consumed_;
  if (have < kFrameHeaderBytes) return kFrameHeaderBytes - have;
  uint32_t length = 0;
  std::memcpy(&length, buffer_.data() + consumed_ + 4, 4);
  const size_t total = kFrameHeaderBytes + std::min<size_t>(length, max_payload_bytes_);
  return total > have ? total - have : 1;
}

bool FrameReader::next(std::vector<std::byte>* payload) {
  if (failed()) return false;
  const size_t have = buffer_.size() - consumed_;
  if (have < kFrameHeaderBytes) return false;
  uint32_t header[2];
  std::memcpy(header, buffer_.data() + consumed_, sizeof(header));
  if (header[0] != kControlFrameMagic) {
    error_ = "garbage on the connection (bad frame magic)";
    return false;
  }
  if (header[1] > max_payload_bytes_) {
    error_ = "message of " + std::to_string(header[1]) + " bytes > max " + std::to_string(max_payload_bytes_);
    return false;
  }
  if (have < kFrameHeaderBytes + header[1]) return false;
  const auto* begin = buffer_.data() + consumed_ + kFrameHeaderBytes;
  payload->assign(begin, begin + header[1]);
  consumed_ += kFrameHeaderBytes + header[1];
  if (consumed_ > (1u << 16) && consumed_ * 2 > buffer_.size()) {  // compact now and then
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(consumed_));
    consumed_ = 0;
  }
  return true;
}

// ---- authentication ------------------------------------------------------------------------

Nonce random_nonce() {
  Nonce n{};
  MERIDIAN_ASSERT(RAND_bytes(n.data(), static_cast<int>(n.size())) == 1, "RAND_bytes failed");
  return n;
}

Proof hmac_proof(const std::string& token, char side, std::span<const std::byte> hello_payload, const Nonce& nonce_a) {
  std::vector<uint8_t> msg;
  msg.reserve(1 + hello_payload.size() + nonce_a.size());
  msg.push_back(static_cast<uint8_t>(side));
  const auto* h = reinterpret_cast<const uint8_t*>(hello_payload.data());
  msg.insert(msg.end(), h, h + hello_payload.size());
  msg.insert(msg.end(), nonce_a.begin(), nonce_a.end());
  Proof out{};
  unsigned int len = 0;
  const uint8_t* r = HMAC(EVP_sha256(), token.data(), static_cast<int>(token.size()), msg.data(), msg.size(),
                          out.data(), &len);
  MERIDIAN_ASSERT(r != nullptr && len == out.size(), "HMAC-SHA256 failed (len {})", len);
  return out;
}

bool proofs_equal(const Proof& a, const Proof& b) { return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0; }

Result<std::string> read_token_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Status::error("cannot read token file '" + path + "'",
                         "create it with e.g. `head -c 32 /dev/urandom | base64 > " + path + "` and give every peer the same file");
  }
  std::string token((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r' || token.back() == ' ' || token.back() == '\t')) {
    token.pop_back();
  }
  if (token.empty()) return Status::error("token file '" + path + "' is empty", "write a random secret into it");
  return token;
}

ClientHandshake::ClientHandshake(std::string token, Hello hello) : token_(std::move(token)), hello_(hello) {
  hello_.nonce = random_nonce();
}

std::vector<std::byte> ClientHandshake::start() {
  hello_payload_ = encode_message(hello_);
  return encode_frame(hello_);
}

std::vector<std::byte> ClientHandshake::on_payload(std::span<const std::byte> payload) {
  if (done_) return {};
  Result<ControlMessage> m = decode_message(payload);
  if (!m) {
    done_ = true;
    status_ = Status::error("handshake: " + m.status().message());
    return {};
  }
  if (const auto* v = std::get_if<Verdict>(&*m)) {
    done_ = true;
    if (!v->accepted) {
      status_ = Status::error("refused by the other side: " + v->reason,
                              "check that both sides use the same run token file and the same meridian version");
    } else if (!got_challenge_) {
      status_ = Status::error("handshake: accepted without a challenge");
    } else if (!server_proof_ok_) {
      status_ = Status::error("the other side failed to prove the run token",
                              "check that both sides use the same run token file");
    }
    return {};
  }
  if (const auto* c = std::get_if<Challenge>(&*m); c != nullptr && !got_challenge_) {
    got_challenge_ = true;
    server_proof_ok_ = proofs_equal(c->proof, hmac_proof(token_, 'A', hello_payload_, c->nonce));
    // Answer even when the acceptor's proof is wrong, so that it too learns that the tokens
    // differ and can say so on its side.
    return encode_frame(ProofMsg{hmac_proof(token_, 'C', hello_payload_, c->nonce)});
  }
  done_ = true;
  status_ = Status::error(std::string("handshake: unexpected ") + message_name(*m));
  return {};
}

ServerHandshake::ServerHandshake(std::string token, HelloCheck check, const void* context)
    : token_(std::move(token)), check_(check), context_(context) {}

std::vector<std::byte> ServerHandshake::refuse(std::string reason, std::string hint) {
  done_ = true;
  status_ = Status::error(reason, std::move(hint));
  return encode_frame(Verdict{false, std::move(reason)});
}

std::vector<std::byte> ServerHandshake::on_payload(std::span<const std::byte> payload) {
  if (done_) return {};
  Result<ControlMessage> m = decode_message(payload);
  if (!m) return refuse("handshake: " + m.status().message(), "");
  if (!got_hello_) {
    const auto* h = std::get_if<Hello>(&*m);
    if (h == nullptr) return refuse(std::string("handshake: expected Hello, got ") + message_name(*m), "");
    got_hello_ = true;
    hello_ = *h;
    if (h->version != kProtocolVersion) {
      return refuse("protocol version " + std::to_string(h->version) + " is not supported: this side speaks version " +
                        std::to_string(kProtocolVersion),
                    "run the same meridian version on every node");
    }
    if (check_ != nullptr) {
      std::string why = check_(*h, context_);
      if (!why.empty()) return refuse(std::move(why), "");
    }
    hello_payload_.assign(payload.begin(), payload.end());
    nonce_ = random_nonce();
    return encode_frame(Challenge{nonce_, hmac_proof(token_, 'A', hello_payload_, nonce_)});
  }
  const auto* p = std::get_if<ProofMsg>(&*m);
  if (p == nullptr) return refuse(std::string("handshake: expected Proof, got ") + message_name(*m), "");
  if (!proofs_equal(p->proof, hmac_proof(token_, 'C', hello_payload_, nonce_))) {
    return refuse("authentication failed: wrong run token", "give every peer the coordinator's token file");
  }
  done_ = true;
  return encode_frame(Verdict{true, ""});
}

}  // namespace meridian::net::membership
