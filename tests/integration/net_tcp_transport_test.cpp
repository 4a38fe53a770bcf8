// TCP transport on loopback with OS-chosen ports: mesh setup, framed delivery over several
// streams, deadlines, a lost peer, an oversized frame and a garbage connection, and the
// all-reduce over real sockets giving the same bytes as the simulation.
// Uses real sockets and threads (no sleeps: every wait is a deadline on an event).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "core/hash.h"
#include "net/collective/sim_all_reduce.h"
#include "net/transport/tcp_transport.h"

namespace meridian::net {
namespace {

int64_t now_us() { return SteadyClock().now_us(); }

struct Mesh {
  std::vector<std::unique_ptr<TcpTransport>> peers;
};

// Starts n transports on port 0 and connects them all, each connect_mesh in its own thread.
Mesh make_mesh(size_t n, TcpTransportOptions options = {}, std::vector<size_t> max_bytes = {}) {
  Mesh mesh;
  std::vector<std::string> addresses;
  for (size_t i = 0; i < n; ++i) {
    TcpTransportOptions o = options;
    if (i < max_bytes.size()) o.max_message_bytes = max_bytes[i];
    Result<std::unique_ptr<TcpTransport>> t = TcpTransport::listen(o);
    EXPECT_TRUE(t.is_ok()) << t.status().to_string();
    addresses.push_back("127.0.0.1:" + std::to_string((*t)->listen_port()));
    mesh.peers.push_back(std::move(*t));
  }
  std::vector<Status> status(n);
  std::vector<std::thread> threads;
  const int64_t deadline = now_us() + 10'000'000;
  for (size_t i = 0; i < n; ++i) {
    threads.emplace_back([&, i] { status[i] = mesh.peers[i]->connect_mesh(static_cast<PeerId>(i), addresses, deadline); });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < n; ++i) EXPECT_TRUE(status[i].is_ok()) << "peer " << i << ": " << status[i].to_string();
  return mesh;
}

std::vector<std::byte> payload(size_t n, uint8_t tag) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::byte(static_cast<uint8_t>(tag + i * 7));
  return v;
}

TEST(net_TcpTransport, MeshDeliversFramesBothWaysOverSeveralStreams) {
  Mesh mesh = make_mesh(3, {.streams_per_peer = 3});
  for (auto& p : mesh.peers) EXPECT_NE(p->listen_port(), 0);
  const std::vector<size_t> sizes = {0, 1, 7, 1000, 3u << 20};
  for (PeerId from = 0; from < 3; ++from) {
    for (PeerId to = 0; to < 3; ++to) {
      if (from == to) continue;
      for (size_t s = 0; s < sizes.size(); ++s) {
        ASSERT_TRUE(mesh.peers[from]->send(to, payload(sizes[s], static_cast<uint8_t>(from * 16 + s))).is_ok());
      }
    }
  }
  for (PeerId to = 0; to < 3; ++to) {
    std::map<std::pair<PeerId, size_t>, std::vector<std::byte>> got;  // (from, size) -> bytes
    for (size_t k = 0; k < 2 * sizes.size(); ++k) {
      Message m;
      const NetStatus st = mesh.peers[to]->recv(&m, now_us() + 10'000'000);
      ASSERT_TRUE(st.is_ok()) << st.to_string();
      got[{m.peer, m.bytes.size()}] = std::move(m.bytes);
    }
    for (PeerId from = 0; from < 3; ++from) {
      if (from == to) continue;
      for (size_t s = 0; s < sizes.size(); ++s) {
        EXPECT_EQ((got[{from, sizes[s]}]), payload(sizes[s], static_cast<uint8_t>(from * 16 + s)))
            << "from " << from << " to " << to << " size " << sizes[s];
      }
    }
  }
}

TEST(net_TcpTransport, DestructionFlushesQueuedFrames) {
  // A peer that sends its last frames and exits at once must not lose them: 32 MiB cannot
  // leave in one send, so without the flush on close the receiver sees a lost peer instead.
  TcpTransportOptions options;
  options.socket_buffer_bytes = 64 << 10;
  Mesh mesh = make_mesh(2, options);
  const std::vector<std::byte> big = payload(32u << 20, 5);
  ASSERT_TRUE(mesh.peers[0]->send(1, big).is_ok());
  ASSERT_TRUE(mesh.peers[0]->send(1, payload(10, 9)).is_ok());
  mesh.peers[0].reset();  // destroy right away
  // Frames travel on different streams, so they may arrive in either order.
  std::vector<std::vector<std::byte>> got;
  for (int i = 0; i < 2; ++i) {
    Message m;
    const NetStatus st = mesh.peers[1]->recv(&m, now_us() + 10'000'000);
    ASSERT_TRUE(st.is_ok()) << "frame " << i << " was dropped at close";
    got.push_back(std::move(m.bytes));
  }
  if (got[0].size() != big.size()) std::swap(got[0], got[1]);
  EXPECT_EQ(got[0], big);
  EXPECT_EQ(got[1], payload(10, 9));
}

TEST(net_TcpTransport, RecvReturnsTimeoutAtItsDeadline) {
  Mesh mesh = make_mesh(2);
  const int64_t start = now_us();
  Message m;
  const NetStatus st = mesh.peers[0]->recv(&m, start + 50'000);
  EXPECT_EQ(st.code(), NetCode::kTimeout);
  const int64_t waited = now_us() - start;
  EXPECT_GE(waited, 50'000);
  EXPECT_LT(waited, 2'000'000);
}

TEST(net_TcpTransport, ClosedPeerIsReportedLostOnce) {
  Mesh mesh = make_mesh(3);
  mesh.peers[1].reset();  // closes its sockets, as a killed process would
  for (PeerId p : {0u, 2u}) {
    Message m;
    const NetStatus st = mesh.peers[p]->recv(&m, now_us() + 5'000'000);
    EXPECT_EQ(st.code(), NetCode::kPeerLost) << st.to_string();
    EXPECT_EQ(st.peer(), 1u);
    EXPECT_EQ(mesh.peers[p]->send(1, payload(3, 0)).code(), NetCode::kPeerLost);
    EXPECT_EQ(mesh.peers[p]->recv(&m, now_us() + 20'000).code(), NetCode::kTimeout);  // reported once
  }
}

TEST(net_TcpTransport, OversizedFrameClosesThatPeerOnly) {
  // Peer 0 accepts at most 1 MiB; peer 1 sends it 2 MiB. Peer 2 is unaffected.
  Mesh mesh = make_mesh(3, {}, {1u << 20, 64u << 20, 64u << 20});
  ASSERT_TRUE(mesh.peers[1]->send(0, payload(2u << 20, 1)).is_ok());
  Message m;
  NetStatus st = mesh.peers[0]->recv(&m, now_us() + 5'000'000);
  EXPECT_EQ(st.code(), NetCode::kPeerLost);
  EXPECT_EQ(st.peer(), 1u);
  EXPECT_NE(st.detail().find("> max"), std::string::npos) << st.detail();
  EXPECT_EQ(mesh.peers[0]->send(1, payload(1, 0)).code(), NetCode::kPeerLost);
  // Sending over the limit is refused at the sender too.
  EXPECT_EQ(mesh.peers[0]->send(2, payload((1u << 20) + 1, 0)).code(), NetCode::kMessageTooLarge);
  ASSERT_TRUE(mesh.peers[2]->send(0, payload(100, 2)).is_ok());
  st = mesh.peers[0]->recv(&m, now_us() + 5'000'000);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  EXPECT_EQ(m.peer, 2u);
  EXPECT_EQ(m.bytes, payload(100, 2));
}

TEST(net_TcpTransport, GarbageConnectionIsDroppedAndMeshCompletes) {
  Result<std::unique_ptr<TcpTransport>> a = TcpTransport::listen({});
  Result<std::unique_ptr<TcpTransport>> b = TcpTransport::listen({});
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  // A stranger connects to peer 0 first and sends junk instead of a hello.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons((*a)->listen_port());
  ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const char junk[] = "GET / HTTP/1.1\r\n\r\n";
  ASSERT_GT(::send(fd, junk, sizeof(junk), MSG_NOSIGNAL), 0);
  const std::vector<std::string> addresses = {"127.0.0.1:" + std::to_string((*a)->listen_port()),
                                              "127.0.0.1:" + std::to_string((*b)->listen_port())};
  Status sb;
  std::thread tb([&] { sb = (*b)->connect_mesh(1, addresses, now_us() + 10'000'000); });
  const Status sa = (*a)->connect_mesh(0, addresses, now_us() + 10'000'000);
  tb.join();
  ::close(fd);
  ASSERT_TRUE(sa.is_ok()) << sa.to_string();
  ASSERT_TRUE(sb.is_ok()) << sb.to_string();
  ASSERT_TRUE((*b)->send(0, payload(5, 9)).is_ok());
  Message m;
  ASSERT_TRUE((*a)->recv(&m, now_us() + 5'000'000).is_ok());
  EXPECT_EQ(m.bytes, payload(5, 9));
}

TEST(net_TcpTransport, IncompleteMeshFailsAtTheDeadlineNamingThePeer) {
  Result<std::unique_ptr<TcpTransport>> a = TcpTransport::listen({});
  ASSERT_TRUE(a.is_ok());
  // Peer 1's address is never served by anyone; peer 0 waits for it until the deadline.
  const std::vector<std::string> addresses = {"127.0.0.1:" + std::to_string((*a)->listen_port()), "127.0.0.1:1"};
  const int64_t start = now_us();
  const Status st = (*a)->connect_mesh(0, addresses, start + 200'000);
  EXPECT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("peer(s) 1"), std::string::npos) << st.to_string();
  EXPECT_GE(now_us() - start, 200'000);
}

// The same all-reduce over TCP (threads, real sockets, arbitrary arrival order) and over the
// simulation gives the same bytes: the result depends only on the inputs. A runner's second
// operation (on the first one's scratch) gives them too and can be undone.
TEST(net_TcpTransport, AllReduceOverTcpMatchesTheSimulationBitForBit) {
  const size_t world = 4, count = 300'000;
  std::vector<std::vector<float>> in(world, std::vector<float>(count));
  for (size_t r = 0; r < world; ++r) {
    SplitMix64 rng(77 + r);
    for (float& x : in[r]) x = static_cast<float>(rng.uniform() * 2 - 1);
  }
  std::vector<PeerId> members = {0, 1, 2, 3};

  for (Codec codec : {Codec::kInt8, Codec::kBf16}) {
    std::vector<std::vector<float>> sim_buf = in;
    std::vector<std::span<float>> spans;
    for (auto& v : sim_buf) spans.emplace_back(v);
    SimNetwork net({.peers = world});
    AllReduceOptions options{.codec = codec, .op = ReduceOp::kMean, .chunk_values = 1u << 14, .timeout_ms = 20'000, .op_id = 1};
    const SimAllReduceResult sim = run_all_reduce_sim(net, members, spans, options);
    for (const NetStatus& st : sim.status) ASSERT_TRUE(st.is_ok()) << st.to_string();

    Mesh mesh = make_mesh(world, {.streams_per_peer = 2});
    std::vector<std::vector<float>> tcp_buf = in;
    std::vector<NetStatus> status(world);
    std::vector<AllReduceStats> stats(world);
    std::vector<std::thread> threads;
    for (size_t r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        AllReduceRunner runner(*mesh.peers[r]);
        // Two operations back to back: a fast peer's frames for op 2 may arrive during op 1.
        std::vector<float> second = in[r];
        status[r] = runner.run(members, tcp_buf[r], options, &stats[r]);
        AllReduceOptions next = options;
        next.op_id = 2;
        const NetStatus st2 = runner.run(members, second, next);
        if (status[r].is_ok() && !st2.is_ok()) status[r] = st2;
        if (status[r].is_ok() && std::memcmp(second.data(), tcp_buf[r].data(), 4 * count) != 0) {
          status[r] = NetStatus::error(NetCode::kProtocol, kNoPeer, "second run differs from the first");
        }
        // The caller may undo a run it must not count (the coordinator failed the operation):
        // the second run, on the first run's scratch, puts back exactly its input, once.
        if (status[r].is_ok() && (!runner.restore_input() || second != in[r] || runner.restore_input())) {
          status[r] = NetStatus::error(NetCode::kProtocol, kNoPeer, "restore_input did not put the input back once");
        }
      });
    }
    for (auto& t : threads) t.join();
    for (size_t r = 0; r < world; ++r) {
      ASSERT_TRUE(status[r].is_ok()) << codec_name(codec) << " rank " << r << ": " << status[r].to_string();
      EXPECT_EQ(0, std::memcmp(tcp_buf[r].data(), sim_buf[0].data(), 4 * count)) << "rank " << r;
      EXPECT_EQ(stats[r].payload_bytes_sent, sim.stats[r].payload_bytes_sent);
    }
  }
}

}  // namespace
}  // namespace meridian::net
