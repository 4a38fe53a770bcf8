// Real-process tests of Communicator::sync_shared_state: a coordinator and net_peer processes
// in --mode sync (a deterministic multi-buffer state, one command per stdin line, one line per
// result on stdout). OS-chosen ports; the tests wait on the peers' lines, never sleep.
//
//   * a late joiner with an empty state joins at update_topology, syncs, and its state hash
//     equals the others'; its download throughput is printed (MERIDIAN_SYNC_TEST_MIB sets the
//     state size, 64 MiB by default);
//   * a stale peer (one buffer differs) downloads exactly that buffer;
//   * a source SIGKILLed during the transfer: the joiner's sync fails within a bound with its
//     state unchanged, and after update_topology the retry succeeds from the remaining holder.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "integration/net/process_util.h"
#include "support/test_util.h"

namespace {

using meridian::test_support::field;
using meridian::test_support::Process;
using meridian::test_support::steady_now_us;

constexpr int kHeartbeatTimeoutMs = 1000;
constexpr int kWaitMs = 30000;

class NetSyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_file_ = dir_.file("token");
    meridian::test_support::write_all(token_file_, "sync-test-token\n");
    coordinator_ = std::make_unique<Process>(std::vector<std::string>{
        COORDINATOR_BIN, "--listen", "127.0.0.1:0", "--token-file", token_file_, "--heartbeat-timeout-ms",
        std::to_string(kHeartbeatTimeoutMs)});
    const std::optional<std::string> line = coordinator_->wait_for("listening on", 10000);
    ASSERT_TRUE(line) << "coordinator did not start: " << coordinator_->stderr_text();
    address_ = line->substr(line->rfind(' ') + 1);
  }

  std::unique_ptr<Process> start_peer(size_t world, size_t buffers, size_t buffer_bytes, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {NET_PEER_BIN, "--mode", "sync", "--coordinator", address_, "--token-file", token_file_,
                                     "--world", std::to_string(world), "--state-buffers", std::to_string(buffers),
                                     "--buffer-bytes", std::to_string(buffer_bytes), "--op-timeout-ms", "20000"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return std::make_unique<Process>(argv);
  }

  // Sends `command` to every peer and returns each one's line containing `needle`.
  std::vector<std::string> all(const std::vector<Process*>& peers, const std::string& command, const std::string& needle) {
    for (Process* p : peers) p->send_line(command);
    std::vector<std::string> lines;
    for (Process* p : peers) {
      std::optional<std::string> l = p->wait_for(needle, kWaitMs);
      EXPECT_TRUE(l) << "no '" << needle << "' after '" << command << "': " << p->stderr_text();
      lines.push_back(l.value_or(""));
    }
    return lines;
  }

  // Two holders form a view and train (identical steps); returns them.
  std::pair<std::unique_ptr<Process>, std::unique_ptr<Process>> two_holders(size_t buffers, size_t buffer_bytes) {
    auto a = start_peer(2, buffers, buffer_bytes);
    auto b = start_peer(2, buffers, buffer_bytes);
    EXPECT_TRUE(a->wait_for("view epoch=", kWaitMs)) << a->stderr_text();
    EXPECT_TRUE(b->wait_for("view epoch=", kWaitMs)) << b->stderr_text();
    for (int step = 0; step < 3; ++step) all({a.get(), b.get()}, "step", "stepped");
    const std::vector<std::string> s = all({a.get(), b.get()}, "sync", "sync ");
    EXPECT_EQ(field(s[0], "downloaded"), "0") << s[0];  // they agree: nothing moves
    EXPECT_EQ(field(s[0], "hash"), field(s[1], "hash"));
    return {std::move(a), std::move(b)};
  }

  // A joiner with an empty state, admitted at the holders' next update_topology.
  std::unique_ptr<Process> admit_joiner(const std::vector<Process*>& holders, size_t buffers, size_t buffer_bytes,
                                        std::vector<std::string> extra = {}) {
    extra.insert(extra.end(), {"--empty-state", "1"});
    auto j = start_peer(0, buffers, buffer_bytes, extra);
    const std::optional<std::string> registered = j->wait_for("registered", kWaitMs);
    EXPECT_TRUE(registered) << j->stderr_text();
    // It waits in update_topology: the coordinator says so once the request is in.
    const std::string at_barrier = "joiner " + field(registered.value_or(""), "peer") + " at the barrier";
    EXPECT_NE(coordinator_->stderr_text(at_barrier, kWaitMs).find(at_barrier), std::string::npos);
    const std::vector<std::string> views = all(holders, "update", "view epoch=");
    const std::optional<std::string> jv = j->wait_for("view epoch=", kWaitMs);
    EXPECT_TRUE(jv) << j->stderr_text();
    EXPECT_EQ(field(views[0], "size"), std::to_string(holders.size() + 1));
    EXPECT_EQ(field(jv.value_or(""), "epoch"), field(views[0], "epoch"));
    return j;
  }

  meridian::test_support::TempDir dir_;
  std::string token_file_;
  std::unique_ptr<Process> coordinator_;
  std::string address_;
};

TEST_F(NetSyncTest, LateJoinerStateHashEqualsTheOthers) {
  const char* mib_env = std::getenv("MERIDIAN_SYNC_TEST_MIB");
  const size_t total_mib = mib_env ? std::strtoul(mib_env, nullptr, 10) : 64;
  const size_t buffers = 8, buffer_bytes = total_mib * (1u << 20) / buffers;
  auto [a, b] = two_holders(buffers, buffer_bytes);
  auto j = admit_joiner({a.get(), b.get()}, buffers, buffer_bytes);
  for (Process* p : {a.get(), b.get(), j.get()}) p->send_line("sync");
  std::vector<std::string> s;
  for (Process* p : {a.get(), b.get(), j.get()}) {
    std::optional<std::string> l = p->wait_for("sync ", kWaitMs);
    ASSERT_TRUE(l) << p->stderr_text();
    ASSERT_NE(l->find("sync ok"), std::string::npos) << *l;
    s.push_back(*l);
  }
  EXPECT_EQ(field(s[2], "hash"), field(s[0], "hash"));  // the late joiner holds the others' state
  EXPECT_EQ(field(s[2], "hash"), field(s[1], "hash"));
  EXPECT_EQ(field(s[2], "revision"), "3");
  EXPECT_EQ(std::stoull(field(s[2], "downloaded")), buffers * buffer_bytes);
  EXPECT_EQ(field(s[2], "buffers"), std::to_string(buffers));
  EXPECT_EQ(std::stoull(field(s[0], "served")) + std::stoull(field(s[1], "served")), buffers * buffer_bytes);
  EXPECT_GT(std::stoull(field(s[0], "served")), 0u);  // striped over both holders
  EXPECT_GT(std::stoull(field(s[1], "served")), 0u);
  std::printf("late joiner: %zu MiB in %s s (transfer %s s): %s Gbit/s\n", total_mib, field(s[2], "seconds").c_str(),
              field(s[2], "transfer_seconds").c_str(), field(s[2], "gbps").c_str());
  // Training goes on together: the joiner votes from now on.
  all({a.get(), b.get(), j.get()}, "step", "stepped");
  const std::vector<std::string> again = all({a.get(), b.get(), j.get()}, "sync", "sync ");
  for (const std::string& l : again) {
    EXPECT_NE(l.find("sync ok"), std::string::npos) << l;
    EXPECT_EQ(field(l, "downloaded"), "0") << l;
    EXPECT_EQ(field(l, "hash"), field(again[0], "hash"));
  }
  for (Process* p : {a.get(), b.get(), j.get()}) p->send_line("leave");
  for (Process* p : {a.get(), b.get(), j.get()}) EXPECT_EQ(p->wait_exit(kWaitMs), 0) << p->stderr_text();
}

TEST_F(NetSyncTest, StalePeerDownloadsOnlyTheDifferingBuffer) {
  const size_t buffers = 4, buffer_bytes = 3u << 20;
  auto a = start_peer(3, buffers, buffer_bytes);
  auto b = start_peer(3, buffers, buffer_bytes);
  auto c = start_peer(3, buffers, buffer_bytes);
  for (Process* p : {a.get(), b.get(), c.get()}) ASSERT_TRUE(p->wait_for("view epoch=", kWaitMs)) << p->stderr_text();
  all({a.get(), b.get(), c.get()}, "step", "stepped");
  c->send_line("stale 2");
  ASSERT_TRUE(c->wait_for("staled", kWaitMs));
  const std::vector<std::string> s = all({a.get(), b.get(), c.get()}, "sync", "sync ");
  for (const std::string& l : s) ASSERT_NE(l.find("sync ok"), std::string::npos) << l;
  EXPECT_EQ(std::stoull(field(s[2], "downloaded")), buffer_bytes);  // one buffer, not the state
  EXPECT_EQ(field(s[2], "buffers"), "1");
  EXPECT_EQ(field(s[0], "downloaded"), "0");
  EXPECT_EQ(field(s[1], "downloaded"), "0");
  EXPECT_EQ(field(s[2], "hash"), field(s[0], "hash"));
  EXPECT_EQ(field(s[1], "hash"), field(s[0], "hash"));
  for (Process* p : {a.get(), b.get(), c.get()}) p->send_line("leave");
  for (Process* p : {a.get(), b.get(), c.get()}) EXPECT_EQ(p->wait_exit(kWaitMs), 0) << p->stderr_text();
}

TEST_F(NetSyncTest, SourceKilledDuringTransferFailsCleanlyAndRetrySucceeds) {
  const size_t buffers = 8, buffer_bytes = 4u << 20;  // 32 MiB, striped over both holders
  auto b = start_peer(2, buffers, buffer_bytes);
  auto a = start_peer(2, buffers, buffer_bytes, {"--hang-in-sync", "1"});  // the victim
  ASSERT_TRUE(a->wait_for("view epoch=", kWaitMs)) << a->stderr_text();
  ASSERT_TRUE(b->wait_for("view epoch=", kWaitMs)) << b->stderr_text();
  all({a.get(), b.get()}, "step", "stepped");
  auto j = admit_joiner({a.get(), b.get()}, buffers, buffer_bytes);
  const std::optional<std::string> empty_hash_line = [&] {
    j->send_line("step");  // revision 1 of nothing: prints the empty state's hash
    return j->wait_for("stepped", kWaitMs);
  }();
  ASSERT_TRUE(empty_hash_line);
  const std::string joiner_hash_before = field(*empty_hash_line, "hash");
  for (Process* p : {a.get(), b.get(), j.get()}) p->send_line("sync");
  // The victim has the election and stops before serving: the joiner is mid-transfer (it pulls
  // b's share, a's never comes). Kill the victim there.
  ASSERT_TRUE(a->wait_for("fault point state_sync.transfer reached (hang)", kWaitMs)) << a->stderr_text();
  const int64_t killed_us = steady_now_us();
  a->signal(SIGKILL);
  const std::optional<std::string> failed = j->wait_for("sync ", kWaitMs);
  ASSERT_TRUE(failed) << j->stderr_text();
  const double fail_ms = (steady_now_us() - killed_us) / 1000.0;
  EXPECT_NE(failed->find("sync error"), std::string::npos) << *failed;
  EXPECT_EQ(field(*failed, "unchanged"), "1") << *failed;
  EXPECT_EQ(field(*failed, "hash"), joiner_hash_before);
  EXPECT_LT(fail_ms, 2.0 * kHeartbeatTimeoutMs) << *failed;
  std::printf("joiner's sync failed %.0f ms after the source was killed: %s\n", fail_ms, failed->c_str());
  const std::optional<std::string> b_result = b->wait_for("sync ", kWaitMs);
  ASSERT_TRUE(b_result) << b->stderr_text();
  EXPECT_NE(b_result->find("sync error"), std::string::npos) << *b_result;  // one final status: aborted
  // The next sync, under the new view, pulls everything from the remaining holder.
  const std::vector<std::string> views = all({b.get(), j.get()}, "update", "view epoch=");
  EXPECT_EQ(field(views[0], "size"), "2");
  const std::vector<std::string> s = all({b.get(), j.get()}, "sync", "sync ");
  for (const std::string& l : s) ASSERT_NE(l.find("sync ok"), std::string::npos) << l;
  EXPECT_EQ(field(s[1], "hash"), field(s[0], "hash"));
  EXPECT_EQ(std::stoull(field(s[1], "downloaded")), buffers * buffer_bytes);
  EXPECT_EQ(std::stoull(field(s[0], "served")), buffers * buffer_bytes);
  for (Process* p : {b.get(), j.get()}) p->send_line("leave");
  for (Process* p : {b.get(), j.get()}) EXPECT_EQ(p->wait_exit(kWaitMs), 0) << p->stderr_text();
}

}  // namespace
