// The authenticated peer-to-peer mesh (src/net/membership/mesh_transport.h) on loopback, one
// thread per peer: the right token and epoch build the mesh and carry frames; a peer with
// another token, or from another view epoch, is refused on both sides with its reason, and
// the mesh fails at its deadline naming the missing peer. Ports are chosen by the OS.
#include <gtest/gtest.h>
#include <unistd.h>

#include <thread>

#include "net/membership/mesh_transport.h"
#include "net/membership/socket_io.h"

namespace {

namespace ms = meridian::net::membership;
using meridian::Status;

struct MeshPeer {
  ms::Listener listener;
  std::unique_ptr<ms::MeshTransport> mesh;
  Status status;
};

// Builds a mesh of tokens.size() peers in threads; peer i uses tokens[i] and epochs[i].
std::vector<MeshPeer> build(const std::vector<std::string>& tokens, const std::vector<uint64_t>& epochs,
                            int64_t timeout_ms) {
  std::vector<MeshPeer> peers(tokens.size());
  std::vector<std::string> addresses;
  for (auto& p : peers) {
    auto l = ms::listen_tcp("127.0.0.1:0");
    EXPECT_TRUE(l) << l.status().message();
    p.listener = *l;
    addresses.push_back(p.listener.address);
  }
  const int64_t deadline = ms::steady_now_us() + timeout_ms * 1000;
  std::vector<std::thread> threads;
  for (size_t i = 0; i < peers.size(); ++i) {
    ms::MeshTransportOptions o;
    o.token = tokens[i];
    o.epoch = epochs[i];
    o.streams_per_peer = 2;
    peers[i].mesh = std::make_unique<ms::MeshTransport>(o, peers[i].listener.fd);
    threads.emplace_back([&, i] {
      peers[i].status = peers[i].mesh->connect_mesh(static_cast<meridian::net::PeerId>(i), addresses, deadline);
    });
  }
  for (auto& t : threads) t.join();
  return peers;
}

void close_all(std::vector<MeshPeer>& peers) {
  for (auto& p : peers) {
    p.mesh.reset();
    ::close(p.listener.fd);
  }
}

TEST(NetMesh, RightTokenAndEpochConnectAndCarryFrames) {
  auto peers = build({"tok", "tok", "tok"}, {5, 5, 5}, 5000);
  for (auto& p : peers) ASSERT_TRUE(p.status.is_ok()) << p.status.message();
  std::vector<std::byte> hello = {std::byte{1}, std::byte{2}, std::byte{3}};
  ASSERT_TRUE(peers[2].mesh->send(0, hello).is_ok());
  meridian::net::Message m;
  const auto st = peers[0].mesh->recv(&m, ms::steady_now_us() + 5'000'000);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  EXPECT_EQ(m.peer, 2u);
  EXPECT_EQ(m.bytes, hello);
  // interrupt() wakes a waiting recv once, with the reason.
  peers[1].mesh->interrupt("view changed");
  const auto intr = peers[1].mesh->recv(&m, ms::steady_now_us() + 5'000'000);
  EXPECT_EQ(intr.code(), meridian::net::NetCode::kClosed);
  EXPECT_EQ(intr.detail(), "view changed");
  close_all(peers);
}

TEST(NetMesh, WrongTokenIsRefusedAndTheMeshFailsNamingThePeer) {
  auto peers = build({"tok", "other"}, {5, 5}, 600);
  ASSERT_FALSE(peers[1].status.is_ok());
  EXPECT_NE(peers[1].status.message().find("wrong run token"), std::string::npos) << peers[1].status.message();
  ASSERT_FALSE(peers[0].status.is_ok());
  EXPECT_NE(peers[0].status.message().find("no connection from peer(s) 1"), std::string::npos) << peers[0].status.message();
  close_all(peers);
}

TEST(NetMesh, PeerOfAnotherEpochIsRefused) {
  auto peers = build({"tok", "tok"}, {5, 6}, 600);
  ASSERT_FALSE(peers[1].status.is_ok());
  EXPECT_NE(peers[1].status.message().find("view epoch 6 differs from this peer's epoch 5"), std::string::npos)
      << peers[1].status.message();
  EXPECT_FALSE(peers[0].status.is_ok());
  close_all(peers);
}

}  // namespace
