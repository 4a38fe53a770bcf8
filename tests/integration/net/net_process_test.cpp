// Integration tests of the comms layer with real processes on loopback: a coordinator
// (meridian-coordinator) and test peers (net_peer) started as child processes, every port
// chosen by the OS and read back from the processes' stdout, every wait bounded by a deadline,
// and no sleeps: the tests synchronise on the lines the processes print (and pace the peers'
// rounds through their stdin when they need to act between two rounds).
//
// Measured and asserted: a SIGKILLed or SIGSTOPped peer makes the survivors' all_reduce fail
// within 2x the heartbeat timeout with their buffers unchanged, and the retry under the new
// view gives the exact sum; a coordinator killed and restarted on the same port is
// re-populated and the run goes on in the same view; a wrong token or protocol version is
// refused with a one-line reason on both sides; garbage and oversized messages close only
// their own connection.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "net/membership/socket_io.h"
#include "net/membership/wire.h"
#include "integration/net/process_util.h"
#include "support/test_util.h"

namespace {

using meridian::net::membership::steady_now_us;
namespace ms = meridian::net::membership;
using meridian::test_support::Process;
using meridian::test_support::field;

constexpr int kHeartbeatTimeoutMs = 1000;

class NetProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_file_ = dir_.file("token");
    meridian::test_support::write_all(token_file_, "s3cret-run-token\n");
    start_coordinator("127.0.0.1:0");
  }

  void start_coordinator(const std::string& listen) {
    coordinator_ = std::make_unique<Process>(std::vector<std::string>{
        COORDINATOR_BIN, "--listen", listen, "--token-file", token_file_, "--heartbeat-timeout-ms",
        std::to_string(kHeartbeatTimeoutMs)});
    const std::optional<std::string> line = coordinator_->wait_for("listening on", 10000);
    ASSERT_TRUE(line) << "coordinator did not start: " << coordinator_->stderr_text();
    address_ = line->substr(line->rfind(' ') + 1);
  }

  std::unique_ptr<Process> start_peer(size_t world, size_t rounds, size_t count, std::vector<std::string> extra = {},
                                      const std::string& token_file = "") {
    std::vector<std::string> argv = {NET_PEER_BIN, "--coordinator", address_, "--token-file",
                                     token_file.empty() ? token_file_ : token_file, "--world", std::to_string(world),
                                     "--rounds", std::to_string(rounds), "--count", std::to_string(count),
                                     "--op-timeout-ms", "20000"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return std::make_unique<Process>(argv);
  }

  meridian::test_support::TempDir dir_;
  std::string token_file_;
  std::unique_ptr<Process> coordinator_;
  std::string address_;
};

TEST_F(NetProcessTest, ThreePeersAgreeBitForBit) {
  std::vector<std::unique_ptr<Process>> peers;
  for (int i = 0; i < 3; ++i) peers.push_back(start_peer(3, 3, 100000));
  for (size_t round = 0; round < 3; ++round) {
    std::string hash;
    for (auto& p : peers) {
      const auto line = p->wait_for("round=" + std::to_string(round) + " ok", 20000);
      ASSERT_TRUE(line) << p->stderr_text();
      EXPECT_EQ(field(*line, "size"), "3");
      EXPECT_EQ(field(*line, "verified"), "1") << *line;
      if (hash.empty()) hash = field(*line, "hash");
      EXPECT_EQ(field(*line, "hash"), hash);
      // 2(N-1)/N x payload (400000 bytes) plus headers.
      const double sent = std::stod(field(*line, "bytes_sent"));
      EXPECT_GE(sent, 2.0 * 2 / 3 * 400000);
      EXPECT_LE(sent, 2.0 * 2 / 3 * 400000 * 1.01);
    }
  }
  for (auto& p : peers) EXPECT_EQ(p->wait_exit(10000), 0) << p->stderr_text();
}

// start_all_reduce/finish: the same bytes on every peer as the blocking call, the exact sums,
// while the calling thread went on computing.
TEST_F(NetProcessTest, BackgroundAllReduceAgreesWhileTheCallerComputes) {
  std::vector<std::unique_ptr<Process>> peers;
  for (int i = 0; i < 3; ++i) peers.push_back(start_peer(3, 3, 1000000, {"--background", "1"}));
  for (size_t round = 0; round < 3; ++round) {
    std::string hash;
    for (auto& p : peers) {
      const auto line = p->wait_for("round=" + std::to_string(round) + " ok", 30000);
      ASSERT_TRUE(line) << p->stderr_text();
      EXPECT_EQ(field(*line, "verified"), "1") << *line;
      if (hash.empty()) hash = field(*line, "hash");
      EXPECT_EQ(field(*line, "hash"), hash);
      EXPECT_GT(std::stoull(field(*line, "computed")), 0u) << "the caller's thread did nothing meanwhile: " << *line;
    }
  }
  for (auto& p : peers) EXPECT_EQ(p->wait_exit(10000), 0) << p->stderr_text();
}

// A peer that dies (SIGKILL) or freezes (SIGSTOP) while the others are in an all-reduce.
void survive_peer_failure(std::vector<std::unique_ptr<Process>>& peers, int sig,
                          int64_t* detect_ms) {
  // peers[2] stops before round 1; peers[0..1] enter round 1 and wait for its contributions.
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(peers[i]->wait_for("round=1 start", 20000)) << peers[i]->stderr_text();
  ASSERT_TRUE(peers[2]->wait_for("hang round=1", 20000)) << peers[2]->stderr_text();
  const int64_t t0 = steady_now_us();
  peers[2]->signal(sig);
  int64_t worst_us = 0;
  for (int i = 0; i < 2; ++i) {
    const auto err = peers[i]->wait_for("round=1 error", 4 * kHeartbeatTimeoutMs);
    ASSERT_TRUE(err) << "survivor " << i << " did not notice: " << peers[i]->stderr_text();
    worst_us = std::max(worst_us, steady_now_us() - t0);
    EXPECT_EQ(field(*err, "unchanged"), "1") << *err;
  }
  *detect_ms = worst_us / 1000;
  EXPECT_LT(worst_us, 2 * kHeartbeatTimeoutMs * 1000) << "detection took " << worst_us / 1000 << " ms";
  std::string hash;
  for (int i = 0; i < 2; ++i) {
    const auto ok = peers[i]->wait_for("round=1 ok", 20000);
    ASSERT_TRUE(ok) << peers[i]->stderr_text();
    EXPECT_EQ(field(*ok, "size"), "2");
    EXPECT_EQ(field(*ok, "verified"), "1") << *ok;
    if (hash.empty()) hash = field(*ok, "hash");
    EXPECT_EQ(field(*ok, "hash"), hash);
  }
  for (int i = 0; i < 2; ++i) EXPECT_EQ(peers[i]->wait_exit(20000), 0) << peers[i]->stderr_text();
}

TEST_F(NetProcessTest, SigkillPeerMidAllReduce) {
  std::vector<std::unique_ptr<Process>> peers;
  for (int i = 0; i < 2; ++i) peers.push_back(start_peer(3, 3, 200000));
  peers.push_back(start_peer(3, 3, 200000, {"--hang-at-round", "1"}));
  int64_t detect_ms = 0;
  survive_peer_failure(peers, SIGKILL, &detect_ms);
  std::printf("SIGKILL detected by the survivors after %lld ms (heartbeat timeout %d ms)\n",
              static_cast<long long>(detect_ms), kHeartbeatTimeoutMs);
}

TEST_F(NetProcessTest, SigstopPeerMidAllReduce) {
  std::vector<std::unique_ptr<Process>> peers;
  for (int i = 0; i < 2; ++i) peers.push_back(start_peer(3, 3, 200000));
  peers.push_back(start_peer(3, 3, 200000, {"--hang-at-round", "1"}));
  int64_t detect_ms = 0;
  survive_peer_failure(peers, SIGSTOP, &detect_ms);
  // A frozen peer keeps its sockets open: only the heartbeat timeout can reveal it.
  EXPECT_GE(detect_ms, kHeartbeatTimeoutMs / 2);
  std::printf("SIGSTOP detected by the survivors after %lld ms (heartbeat timeout %d ms)\n",
              static_cast<long long>(detect_ms), kHeartbeatTimeoutMs);
}

TEST_F(NetProcessTest, CoordinatorRestartOnSamePortRunContinues) {
  std::vector<std::unique_ptr<Process>> peers;
  for (int i = 0; i < 3; ++i) peers.push_back(start_peer(3, 5, 1000, {"--gate-stdin", "1"}));
  std::string epoch;
  for (int round = 0; round < 2; ++round) {
    for (auto& p : peers) p->send_line("go");
    for (auto& p : peers) {
      const auto ok = p->wait_for("round=" + std::to_string(round) + " ok", 20000);
      ASSERT_TRUE(ok) << p->stderr_text();
      epoch = field(*ok, "epoch");
    }
  }
  coordinator_->signal(SIGKILL);
  EXPECT_EQ(coordinator_->wait_exit(5000), -1);  // killed, no exit code
  // Round 2 runs on the mesh while the coordinator is away; it ends when the new coordinator,
  // re-populated by the peers, gives its final status.
  for (auto& p : peers) p->send_line("go");
  const std::string old_address = address_;
  const int64_t t_restart = steady_now_us();
  start_coordinator(old_address);
  ASSERT_EQ(address_, old_address);
  int64_t recovered_us = 0;
  for (auto& p : peers) {
    const auto ok = p->wait_for("round=2 ok", 20000);
    ASSERT_TRUE(ok) << p->stderr_text();
    recovered_us = std::max(recovered_us, steady_now_us() - t_restart);
    EXPECT_EQ(field(*ok, "epoch"), epoch) << "the view should survive the restart";
    EXPECT_EQ(field(*ok, "verified"), "1");
  }
  EXPECT_NE(coordinator_->stderr_text("re-created view", 5000).find("re-created view epoch " + epoch), std::string::npos);
  std::printf("coordinator restart: all peers finished the pending round %lld ms after the restart\n",
              static_cast<long long>(recovered_us / 1000));
  for (int round = 3; round < 5; ++round) {
    for (auto& p : peers) p->send_line("go");
    for (auto& p : peers) {
      const auto ok = p->wait_for("round=" + std::to_string(round) + " ok", 20000);
      ASSERT_TRUE(ok) << p->stderr_text();
      EXPECT_EQ(field(*ok, "epoch"), epoch);
    }
  }
  for (auto& p : peers) EXPECT_EQ(p->wait_exit(10000), 0) << p->stderr_text();
}

TEST_F(NetProcessTest, LateJoinerIsAdmittedAtTheNextBarrierOnly) {
  std::vector<std::unique_ptr<Process>> peers;
  for (int i = 0; i < 2; ++i) peers.push_back(start_peer(2, 3, 5000, {"--gate-stdin", "1", "--update-every", "2"}));
  for (auto& p : peers) p->send_line("go");
  for (auto& p : peers) ASSERT_TRUE(p->wait_for("round=0 ok", 20000)) << p->stderr_text();
  // The joiner registers and waits in update_topology; round 1 runs without it.
  auto joiner = start_peer(1, 3, 5000, {"--gate-stdin", "1", "--first-round", "2"});
  const auto registered = joiner->wait_for("registered", 10000);
  ASSERT_TRUE(registered) << joiner->stderr_text();
  const std::string at_barrier = "joiner " + field(*registered, "peer") + " at the barrier";
  ASSERT_NE(coordinator_->stderr_text(at_barrier, 10000).find(at_barrier), std::string::npos);
  for (auto& p : peers) p->send_line("go");
  for (auto& p : peers) {
    const auto ok = p->wait_for("round=1 ok", 20000);
    ASSERT_TRUE(ok) << p->stderr_text();
    EXPECT_EQ(field(*ok, "size"), "2");
  }
  // Round 2 starts with update_topology (--update-every 2): the joiner is admitted.
  for (auto& p : peers) p->send_line("go");
  const auto view = joiner->wait_for("view epoch", 20000);
  ASSERT_TRUE(view) << joiner->stderr_text();
  EXPECT_EQ(field(*view, "size"), "3");
  joiner->send_line("go");
  peers.push_back(std::move(joiner));
  std::string hash;
  for (auto& p : peers) {
    const auto ok = p->wait_for("round=2 ok", 20000);
    ASSERT_TRUE(ok) << p->stderr_text();
    EXPECT_EQ(field(*ok, "size"), "3");
    EXPECT_EQ(field(*ok, "verified"), "1");
    if (hash.empty()) hash = field(*ok, "hash");
    EXPECT_EQ(field(*ok, "hash"), hash);
  }
  for (auto& p : peers) EXPECT_EQ(p->wait_exit(10000), 0) << p->stderr_text();
}

TEST_F(NetProcessTest, WrongTokenRefusedOnBothSides) {
  const std::string wrong = dir_.file("wrong_token");
  meridian::test_support::write_all(wrong, "not-the-token\n");
  auto peer = start_peer(1, 1, 10, {}, wrong);
  EXPECT_EQ(peer->wait_exit(10000), 1);
  const std::string peer_err = peer->stderr_text();
  EXPECT_NE(peer_err.find("refused"), std::string::npos) << peer_err;
  EXPECT_NE(peer_err.find("wrong run token"), std::string::npos) << peer_err;
  const std::string coord_err = coordinator_->stderr_text("wrong run token", 5000);
  EXPECT_NE(coord_err.find("refused connection from 127.0.0.1:"), std::string::npos) << coord_err;
  EXPECT_NE(coord_err.find("authentication failed: wrong run token"), std::string::npos) << coord_err;

  auto missing = start_peer(1, 1, 10, {}, dir_.file("no_such_token"));
  EXPECT_EQ(missing->wait_exit(10000), 1);
  EXPECT_NE(missing->stderr_text().find("cannot read token file"), std::string::npos);
}

TEST_F(NetProcessTest, OtherProtocolVersionRefusedOnBothSides) {
  auto peer = start_peer(1, 1, 10, {"--protocol-version", "1"});
  EXPECT_EQ(peer->wait_exit(10000), 1);
  const std::string peer_err = peer->stderr_text();
  EXPECT_NE(peer_err.find("protocol version 1 is not supported"), std::string::npos) << peer_err;
  const std::string coord_err = coordinator_->stderr_text("protocol version 1", 5000);
  EXPECT_NE(coord_err.find("refused connection from"), std::string::npos) << coord_err;
  EXPECT_NE(coord_err.find("protocol version 1 is not supported"), std::string::npos) << coord_err;
}

// Bytes sent on a fresh connection to the coordinator; returns true if the coordinator closes it.
bool closed_after(const std::string& address, const std::vector<std::byte>& bytes, bool authenticate,
                  const std::string& token) {
  const int64_t deadline = steady_now_us() + 5'000'000;
  meridian::Result<int> fd = ms::connect_tcp(address, deadline);
  if (!fd) return false;
  if (authenticate) {
    ms::Hello hello;
    if (!ms::client_handshake(*fd, token, hello, "coordinator", deadline).is_ok()) {
      ::close(*fd);
      return false;
    }
  }
  ms::write_all(*fd, bytes.data(), bytes.size(), deadline);
  ms::FrameReader reader;
  bool closed = false;
  for (;;) {  // skip what the coordinator may send first; wait for the close
    std::vector<std::byte> payload;
    const ms::ReadResult r = ms::read_frame(*fd, reader, &payload, deadline);
    if (r.code == ms::ReadCode::kOk) continue;
    closed = r.code == ms::ReadCode::kClosed;
    break;
  }
  ::close(*fd);
  return closed;
}

TEST_F(NetProcessTest, GarbageAndOversizedMessagesCloseOnlyTheirConnection) {
  std::vector<std::unique_ptr<Process>> peers;
  for (int i = 0; i < 2; ++i) peers.push_back(start_peer(2, 2, 1000, {"--gate-stdin", "1"}));
  for (auto& p : peers) p->send_line("go");
  std::string epoch;
  for (auto& p : peers) {
    const auto ok = p->wait_for("round=0 ok", 20000);
    ASSERT_TRUE(ok) << p->stderr_text();
    epoch = field(*ok, "epoch");
  }
  std::vector<std::byte> garbage(64, std::byte{0x5a});
  std::vector<std::byte> oversized(8);
  const uint32_t header[2] = {ms::kControlFrameMagic, 0x7ffffff0u};
  std::memcpy(oversized.data(), header, 8);
  const std::string token = "s3cret-run-token";
  EXPECT_TRUE(closed_after(address_, garbage, false, token));
  EXPECT_TRUE(closed_after(address_, oversized, false, token));
  EXPECT_TRUE(closed_after(address_, garbage, true, token));
  EXPECT_TRUE(closed_after(address_, oversized, true, token));
  // An authenticated connection with a well-framed but unknown message.
  std::vector<std::byte> framed(10, std::byte{0x5a});  // type 0x5a does not exist
  const uint32_t h2[2] = {ms::kControlFrameMagic, 2};
  std::memcpy(framed.data(), h2, 8);
  EXPECT_TRUE(closed_after(address_, framed, true, token));
  // The peers never noticed: the next round runs in the same view.
  for (auto& p : peers) p->send_line("go");
  for (auto& p : peers) {
    const auto ok = p->wait_for("round=1 ok", 20000);
    ASSERT_TRUE(ok) << p->stderr_text();
    EXPECT_EQ(field(*ok, "epoch"), epoch);
    EXPECT_EQ(field(*ok, "verified"), "1");
  }
  for (auto& p : peers) EXPECT_EQ(p->wait_exit(10000), 0) << p->stderr_text();
  const std::string coord_err = coordinator_->stderr_text();
  EXPECT_NE(coord_err.find("bad frame magic"), std::string::npos) << coord_err;
  EXPECT_NE(coord_err.find("> max"), std::string::npos) << coord_err;
}

}  // namespace
