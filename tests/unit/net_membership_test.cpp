// Unit tests of the control protocol (src/net/membership/wire.h): every message round-trips,
// every truncation is refused with a one-line error, frames are split correctly and garbage or
// oversized frames are refused; and the HMAC handshake accepts the right token and refuses a
// wrong token or another protocol version on both sides. No sockets.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include "net/membership/wire.h"

namespace {

using namespace meridian::net::membership;
using meridian::net::kNoPeer;

meridian::net::PeerReport report_sample() {
  using namespace meridian::net;
  PeerReport r;
  r.revision = 12;
  r.votes = true;
  r.buffers = {{"opt.m", BufferDtype::kF32, 4096, {1, 2}}, {"weights", BufferDtype::kBf16, 1u << 20, {3, 4}}};
  return r;
}

C2M_SyncReport sync_report_sample() { return C2M_SyncReport{42, 17, report_sample()}; }

M2C_SyncElected sync_elected_sample() {
  using namespace meridian::net;
  M2C_SyncElected m{42, 18, {}};
  m.elected.revision = 12;
  m.elected.buffers = {{"a", BufferDtype::kF32, 8, {5, 6}, {0, 3}},
                       {"b", BufferDtype::kBytes, 0, {7, 8}, {3}},
                       {"c", BufferDtype::kI64, 16, {9, 10}, {0, 3}}};
  m.elected.keep_own = {3, 8};
  return m;
}

std::vector<ControlMessage> samples() {
  View v{42, 3, {{0, "10.0.0.1:4000"}, {7, "host-b:4001", {"host-b:4101", "host-b:4102"}}}};
  Hello hello;
  hello.role = Role::kPeerToPeer;
  hello.epoch = 9;
  hello.from_peer = 3;
  hello.stream = 1;
  hello.nonce = random_nonce();
  return {hello,
          Challenge{random_nonce(), {}},
          ProofMsg{},
          Verdict{false, "wrong run token"},
          C2M_Join{5, "127.0.0.1:5000", v},
          C2M_Join{5, "127.0.0.1:5000", v, 1, 2, true, {"127.0.0.1:5001"}},
          C2M_Heartbeat{},
          C2M_UpdateTopology{42, 3},
          C2M_UpdateTopology{42, 0, false},
          C2M_Leave{},
          C2M_OpBegin{42, 17},
          C2M_OpResult{42, 17, false, "peer_lost (peer 2)"},
          M2C_Welcome{5, 250, 1000},
          M2C_View{v, true, 3},
          M2C_OpFinal{42, 17, true, ""},
          sync_report_sample(),
          C2M_SyncReport{42, 19, {.revision = 3, .votes = true, .pulls = false, .buffers = {}}},
          sync_elected_sample()};
}

TEST(NetMembershipWire, EveryMessageRoundTrips) {
  for (const ControlMessage& m : samples()) {
    const std::vector<std::byte> bytes = encode_message(m);
    meridian::Result<ControlMessage> back = decode_message(bytes);
    ASSERT_TRUE(back) << message_name(m) << ": " << back.status().message();
    EXPECT_EQ(back->index(), m.index()) << message_name(m);
    EXPECT_EQ(encode_message(*back), bytes) << message_name(m);
    if (const auto* join = std::get_if<C2M_Join>(&m)) EXPECT_EQ(std::get<C2M_Join>(*back), *join);
    if (const auto* view = std::get_if<M2C_View>(&m)) EXPECT_EQ(std::get<M2C_View>(*back), *view);
  }
}

TEST(NetMembershipWire, TruncatedOrPaddedPayloadsAreRefused) {
  for (const ControlMessage& m : samples()) {
    const std::vector<std::byte> bytes = encode_message(m);
    for (size_t n = 0; n < bytes.size(); ++n) {
      meridian::Result<ControlMessage> r = decode_message(std::span<const std::byte>(bytes.data(), n));
      ASSERT_FALSE(r) << message_name(m) << " truncated to " << n;
      EXPECT_EQ(r.status().message().find('\n'), std::string::npos);
    }
    std::vector<std::byte> padded = bytes;
    padded.push_back(std::byte{0});
    EXPECT_FALSE(decode_message(padded)) << message_name(m);
  }
  const std::vector<std::byte> unknown = {std::byte{0x77}};
  EXPECT_FALSE(decode_message(unknown));
}

TEST(NetMembershipWire, FrameReaderSplitsAndRefusesGarbage) {
  std::vector<std::byte> stream;
  for (const ControlMessage& m : samples()) {
    const std::vector<std::byte> f = encode_frame(m);
    stream.insert(stream.end(), f.begin(), f.end());
  }
  FrameReader reader;
  size_t got = 0;
  for (size_t i = 0; i < stream.size(); i += 3) {  // dribbled in 3-byte pieces
    reader.feed(std::span<const std::byte>(stream).subspan(i, std::min<size_t>(3, stream.size() - i)));
    std::vector<std::byte> payload;
    while (reader.next(&payload)) {
      EXPECT_TRUE(decode_message(payload));
      ++got;
    }
  }
  EXPECT_EQ(got, samples().size());
  EXPECT_FALSE(reader.failed());

  FrameReader garbage;
  std::vector<std::byte> junk(16, std::byte{0x41});
  garbage.feed(junk);
  std::vector<std::byte> payload;
  EXPECT_FALSE(garbage.next(&payload));
  EXPECT_TRUE(garbage.failed());
  EXPECT_NE(garbage.error().find("bad frame magic"), std::string::npos);

  FrameReader oversized(1024);
  uint32_t header[2] = {kControlFrameMagic, 1025};
  std::vector<std::byte> h(8);
  std::memcpy(h.data(), header, 8);
  oversized.feed(h);
  EXPECT_FALSE(oversized.next(&payload));
  EXPECT_NE(oversized.error().find("1025 bytes > max 1024"), std::string::npos);
}

// Runs a handshake between a client and a server state machine, passing frames in memory.
struct HandshakeOutcome {
  meridian::Status client, server;
};
HandshakeOutcome run_handshake(const std::string& client_token, const std::string& server_token, Hello hello,
                               ServerHandshake::HelloCheck check = nullptr) {
  ClientHandshake client(client_token, hello);
  ServerHandshake server(server_token, check, nullptr);
  std::vector<std::byte> to_server = client.start();
  for (int step = 0; step < 8 && !(client.done() && server.done()); ++step) {
    FrameReader a;
    a.feed(to_server);
    std::vector<std::byte> payload;
    std::vector<std::byte> to_client;
    if (a.next(&payload)) to_client = server.on_payload(payload);
    FrameReader b;
    b.feed(to_client);
    to_server.clear();
    if (b.next(&payload)) to_server = client.on_payload(payload);
  }
  EXPECT_TRUE(client.done());
  EXPECT_TRUE(server.done());
  return {client.status(), server.status()};
}

TEST(NetMembershipHandshake, RightTokenAccepted) {
  const HandshakeOutcome o = run_handshake("token-A", "token-A", Hello{});
  EXPECT_TRUE(o.client.is_ok()) << o.client.message();
  EXPECT_TRUE(o.server.is_ok()) << o.server.message();
}

TEST(NetMembershipHandshake, WrongTokenRefusedOnBothSides) {
  const HandshakeOutcome o = run_handshake("token-B", "token-A", Hello{});
  ASSERT_FALSE(o.server.is_ok());
  EXPECT_EQ(o.server.message(), "authentication failed: wrong run token");
  ASSERT_FALSE(o.client.is_ok());
  EXPECT_NE(o.client.message().find("refused by the other side: authentication failed: wrong run token"),
            std::string::npos)
      << o.client.message();
  EXPECT_FALSE(o.client.hint().empty());
  EXPECT_EQ(o.client.message().find('\n'), std::string::npos);
}

TEST(NetMembershipHandshake, OtherProtocolVersionRefusedOnBothSides) {
  Hello hello;
  hello.version = kProtocolVersion + 1;
  const HandshakeOutcome o = run_handshake("t", "t", hello);
  const std::string why = "protocol version " + std::to_string(kProtocolVersion + 1) + " is not supported";
  ASSERT_FALSE(o.server.is_ok());
  EXPECT_NE(o.server.message().find(why), std::string::npos) << o.server.message();
  ASSERT_FALSE(o.client.is_ok());
  EXPECT_NE(o.client.message().find(why), std::string::npos) << o.client.message();
}

TEST(NetMembershipHandshake, HelloCheckRefusesAnotherEpoch) {
  Hello hello;
  hello.role = Role::kPeerToPeer;
  hello.epoch = 3;
  auto check = [](const Hello& h, const void*) -> std::string { return h.epoch == 4 ? "" : "other epoch"; };
  const HandshakeOutcome o = run_handshake("t", "t", hello, check);
  EXPECT_EQ(o.server.message(), "other epoch");
  EXPECT_NE(o.client.message().find("other epoch"), std::string::npos);
}

TEST(NetMembershipHandshake, ProofsBindTheTokenTheHelloAndTheNonce) {
  const std::vector<std::byte> hello = encode_message(Hello{});
  const Nonce n1 = random_nonce(), n2 = random_nonce();
  EXPECT_NE(n1, n2);
  const Proof p = hmac_proof("tok", 'C', hello, n1);
  EXPECT_TRUE(proofs_equal(p, hmac_proof("tok", 'C', hello, n1)));
  EXPECT_FALSE(proofs_equal(p, hmac_proof("tok", 'C', hello, n2)));   // a replay under a new nonce fails
  EXPECT_FALSE(proofs_equal(p, hmac_proof("tok", 'A', hello, n1)));   // the acceptor's proof differs
  EXPECT_FALSE(proofs_equal(p, hmac_proof("tok2", 'C', hello, n1)));
}

}  // namespace

TEST(NetMembershipWire, SyncMessagesRoundTripFieldForField) {
  const C2M_SyncReport r = sync_report_sample();
  auto back = decode_message(encode_message(r));
  ASSERT_TRUE(back) << back.status().message();
  EXPECT_TRUE(std::get<C2M_SyncReport>(*back) == r);
  const M2C_SyncElected e = sync_elected_sample();
  auto back_e = decode_message(encode_message(e));
  ASSERT_TRUE(back_e) << back_e.status().message();
  EXPECT_TRUE(std::get<M2C_SyncElected>(*back_e) == e);
  C2M_SyncReport keeps = r;
  keeps.report.pulls = false;
  auto back_k = decode_message(encode_message(keeps));
  ASSERT_TRUE(back_k) << back_k.status().message();
  EXPECT_FALSE(std::get<C2M_SyncReport>(*back_k).report.pulls);
  EXPECT_FALSE(std::get<C2M_SyncReport>(*back_k) == r);
  // Holder sets are sent once: {0,3} twice costs one set.
  M2C_SyncElected one_set = e;
  one_set.elected.buffers[1].holders = {0, 3};
  EXPECT_LT(encode_message(one_set).size(), encode_message(e).size());
}

TEST(NetMembershipWire, SyncMessagesOutOfBoundsAreRefused) {
  using namespace meridian::net;
  std::string why;
  PeerReport unsorted = report_sample();
  std::swap(unsorted.buffers[0], unsorted.buffers[1]);
  EXPECT_FALSE(sync_report_fits(unsorted, &why));
  EXPECT_NE(why.find("sorted"), std::string::npos) << why;
  PeerReport long_name = report_sample();
  long_name.buffers[1].name = std::string(kMaxBufferNameBytes + 1, 'x');
  EXPECT_FALSE(sync_report_fits(long_name, &why));
  EXPECT_TRUE(sync_report_fits(report_sample(), &why));
  // The decoder refuses what the encoder would never write.
  std::vector<std::byte> bytes = encode_message(C2M_SyncReport{1, 2, unsorted});
  auto r = decode_message(bytes);
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find("sorted"), std::string::npos) << r.status().message();
  // A holder-set index out of range: the last buffer's, before the keep-own list (3 u32s).
  bytes = encode_message(sync_elected_sample());
  bytes[bytes.size() - 16] = std::byte{9};
  EXPECT_FALSE(decode_message(bytes));
  // Keep-own peers not ascending (the last u32).
  bytes = encode_message(sync_elected_sample());
  bytes[bytes.size() - 4] = std::byte{2};
  EXPECT_FALSE(decode_message(bytes));
  // An unknown dtype: the byte after the first elected buffer's name.
  C2M_SyncReport one{1, 2, {}};
  one.report.buffers = {{"n", BufferDtype::kF32, 4, {1, 1}}};
  bytes = encode_message(one);
  bytes[1 + 8 + 8 + 8 + 1 + 4 + 4 + 1] = std::byte{200};
  EXPECT_FALSE(decode_message(bytes));
}

// The fuzz seeds of the sync messages (tests/fuzz/make_coord_sync_corpus.py) are valid frames
// that decode to what the encoder writes.
TEST(NetMembershipWire, SyncFuzzSeedsDecode) {
  for (const char* name : {"sync_report.bin", "sync_elected.bin"}) {
    std::ifstream in(std::string(MERIDIAN_SOURCE_DIR) + "/tests/fuzz/corpus/coord_wire/" + name, std::ios::binary);
    ASSERT_TRUE(in) << name;
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    FrameReader reader;
    reader.feed(std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()), text.size()));
    std::vector<std::byte> payload;
    ASSERT_TRUE(reader.next(&payload)) << name;
    auto m = decode_message(payload);
    ASSERT_TRUE(m) << name << ": " << m.status().message();
    EXPECT_EQ(encode_message(*m), payload) << name;
  }
}
