// Unit tests of the control protocol (src/net/membership/wire.h): every message round-trips,
// every truncation is refused with a one-line error, frames are split correctly and garbage or
// oversized frames are refused; and the HMAC handshake accepts the right token and refuses a
// wrong token or another protocol version on both sides. No sockets.
#include <gtest/gtest.h>

#include <cstring>

#include "net/membership/wire.h"

namespace {

using namespace meridian::net::membership;
using meridian::net::kNoPeer;

std::vector<ControlMessage> samples() {
  View v{42, 3, {{0, "10.0.0.1:4000"}, {7, "host-b:4001"}}};
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
          C2M_Heartbeat{},
          C2M_UpdateTopology{42, 3},
          C2M_Leave{},
          C2M_OpBegin{42, 17},
          C2M_OpResult{42, 17, false, "peer_lost (peer 2)"},
          M2C_Welcome{5, 250, 1000},
          M2C_View{v, true},
          M2C_OpFinal{42, 17, true, ""}};
}

TEST(NetMembershipWire, EveryMessageRoundTrips) {
  for (const ControlMessage& m : samples()) {
    const std::vector<std::byte> bytes = encode_message(m);
    meridian::Result<ControlMessage> back = decode_message(bytes);
    ASSERT_TRUE(back) << message_name(m) << ": " << back.status().message();
    EXPECT_EQ(back->index(), m.index()) << message_name(m);
    EXPECT_EQ(encode_message(*back), bytes) << message_name(m);
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
