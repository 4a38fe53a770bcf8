// Unit tests of the coordinator's run log: the pure JSON line formatter (escaping, invalid
// UTF-8, optional fields), the log events the state machine emits for joins, admissions,
// rounds, leaves, evictions and lost connections, and the daemon appending them to a file.
// The daemon test binds a loopback port chosen by the OS but sends nothing over it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "coord/coordinator_server.h"
#include "coord/coordinator_state.h"

namespace {

using namespace meridian::coord;
namespace w = meridian::net::membership;
using nlohmann::json;

constexpr int64_t kTimeoutUs = 1'000'000;

// Drives a CoordinatorState and keeps its log actions as parsed run-log lines.
class LogHarness {
 public:
  LogHarness() : state(config()) {}

  void feed(ConnId conn, w::ControlMessage m) { take(state.handle(EvMessage{conn, std::move(m)}, now)); }
  void disconnect(ConnId conn) { take(state.handle(EvDisconnected{conn, "closed by the peer"}, now)); }
  void tick() { take(state.handle(EvTick{}, now)); }

  std::vector<json> events(const std::string& kind) const {
    std::vector<json> out;
    for (const json& j : lines) {
      if (j.at("event") == kind) out.push_back(j);
    }
    return out;
  }

  CoordinatorState state;
  int64_t now = 0;
  std::vector<json> lines;

 private:
  static CoordinatorConfig config() {
    CoordinatorConfig c;
    c.heartbeat_timeout_us = kTimeoutUs;
    c.heartbeat_interval_us = kTimeoutUs / 4;
    return c;
  }
  void take(const std::vector<Action>& actions) {
    for (const Action& a : actions) {
      if (a.kind != Action::Kind::kLog) continue;
      const std::string line = run_log_line(1700000000.5, a.text, a.event);
      ASSERT_EQ(line.find('\n'), std::string::npos) << line;
      const json j = json::parse(line);  // throws (fails the test) if it is not JSON
      EXPECT_EQ(j.at("msg"), a.text);
      lines.push_back(j);
    }
  }
};

std::vector<std::string> read_lines(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

TEST(CoordRunLog, LineIsOneJsonObjectWithTheSetFieldsOnly) {
  LogEvent e;
  e.kind = "admitted";
  e.epoch = 7;
  e.size = 2;
  e.members = std::vector<PeerId>{0, 3};
  e.admitted = {3};
  const std::string line = run_log_line(1700000000.1234, "view epoch 7: 2 members (admitted 3)", e);
  const json j = json::parse(line);
  EXPECT_DOUBLE_EQ(j.at("t").get<double>(), 1700000000.123);  // milliseconds
  EXPECT_EQ(j.at("event"), "admitted");
  EXPECT_EQ(j.at("msg"), "view epoch 7: 2 members (admitted 3)");
  EXPECT_EQ(j.at("epoch"), "7");  // a string: epochs use all 64 bits
  EXPECT_EQ(j.at("size"), 2);
  EXPECT_EQ(j.at("members"), json::array({0, 3}));
  EXPECT_EQ(j.at("admitted"), json::array({3}));
  for (const char* absent : {"peer", "address", "round", "op_id", "reason"}) EXPECT_FALSE(j.contains(absent)) << absent;

  // A plain log line is a "note" with no fields.
  const json note = json::parse(run_log_line(0.0, "hello", LogEvent{}));
  EXPECT_EQ(note.at("event"), "note");
  EXPECT_EQ(note.size(), 3u);
}

// Epochs of a restarted coordinator and op ids (round << 32 | sequence) pass 2^53: written as
// strings they survive a JSON reader that holds numbers as doubles.
TEST(CoordRunLog, EpochsAndOpIdsKeepAll64Bits) {
  LogEvent e;
  e.kind = "sync";
  e.epoch = (uint64_t{1} << 62) + 1;
  e.op_id = (uint64_t{3000000} << 32) | 3;
  const json j = json::parse(run_log_line(1.0, "m", e));
  EXPECT_EQ(std::stoull(j.at("epoch").get<std::string>()), *e.epoch);
  EXPECT_EQ(std::stoull(j.at("op_id").get<std::string>()), *e.op_id);
  EXPECT_NE(static_cast<uint64_t>(static_cast<double>(*e.epoch)), *e.epoch);  // what a number would lose
}

TEST(CoordRunLog, StringsAreEscapedAndInvalidUtf8IsReplaced) {
  LogEvent e;
  e.kind = "registered";
  e.peer = 4;
  // A peer chooses its address: quotes, a backslash, control bytes, valid UTF-8 (é) and bytes
  // that are not UTF-8 (a lone continuation byte, a truncated sequence, an overlong '/').
  e.address = "a\"b\\c\nd\te\x01 \xc3\xa9 \x80 \xe2\x82 \xc0\xaf";
  const std::string line = run_log_line(1.0, "msg with \"quotes\"\r\n", e);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  const json j = json::parse(line);
  EXPECT_EQ(j.at("msg"), "msg with \"quotes\"\r\n");
  EXPECT_EQ(j.at("address"), "a\"b\\c\nd\te\x01 \xc3\xa9 \xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(j.at("peer"), 4);
}

// A run's story: two peers register and are admitted, rounds go by, a third joins, then one
// leaves, one goes silent and one loses its connection.
TEST(CoordRunLog, StateMachineLogsJoinsRoundsLeavesAndEvictions) {
  LogHarness h;
  h.feed(1, w::C2M_Join{kNoPeer, "10.0.0.1:5000", {}});
  h.feed(2, w::C2M_Join{kNoPeer, "10.0.0.2:5000", {}});
  ASSERT_EQ(h.events("registered").size(), 2u);
  EXPECT_EQ(h.events("registered")[1].at("address"), "10.0.0.2:5000");
  EXPECT_TRUE(h.events("registered")[1].contains("peer"));

  h.feed(1, w::C2M_UpdateTopology{0, 2});
  EXPECT_TRUE(h.events("round").empty());  // the barrier waits for min_members
  h.feed(2, w::C2M_UpdateTopology{0, 2});
  ASSERT_EQ(h.events("admitted").size(), 1u);
  const json admitted = h.events("admitted")[0];
  const uint64_t e1 = std::stoull(admitted.at("epoch").get<std::string>());
  EXPECT_EQ(admitted.at("size"), 2);
  EXPECT_EQ(admitted.at("members").size(), 2u);
  EXPECT_EQ(admitted.at("admitted").size(), 2u);
  ASSERT_EQ(h.events("round").size(), 1u);
  EXPECT_EQ(h.events("round")[0].at("epoch").get<std::string>(), std::to_string(e1));
  EXPECT_EQ(h.events("round")[0].at("round"), 1);
  EXPECT_EQ(h.events("round")[0].at("size"), 2);

  // Every completed barrier logs a round, also without admissions.
  for (int r = 2; r <= 3; ++r) {
    h.feed(1, w::C2M_UpdateTopology{e1, 0});
    h.feed(2, w::C2M_UpdateTopology{e1, 0});
    ASSERT_EQ(h.events("round").size(), static_cast<size_t>(r));
    EXPECT_EQ(h.events("round").back().at("round"), r);
    EXPECT_EQ(h.events("round").back().at("epoch").get<std::string>(), std::to_string(e1));
  }
  EXPECT_EQ(h.events("admitted").size(), 1u);

  // A joiner waits, then is admitted with the next barrier: a new epoch, round 1.
  h.feed(3, w::C2M_Join{kNoPeer, "10.0.0.3:5000", {}});
  h.feed(3, w::C2M_UpdateTopology{0, 0});
  EXPECT_EQ(h.events("waiting").size(), 3u);  // the two at the bootstrap barrier, then this one
  h.feed(1, w::C2M_UpdateTopology{e1, 0});
  h.feed(2, w::C2M_UpdateTopology{e1, 0});
  ASSERT_EQ(h.events("admitted").size(), 2u);
  EXPECT_EQ(h.events("admitted")[1].at("epoch").get<std::string>(), std::to_string(e1 + 1));
  EXPECT_EQ(h.events("admitted")[1].at("size"), 3);
  EXPECT_EQ(h.events("admitted")[1].at("admitted").size(), 1u);
  EXPECT_EQ(h.events("round").back().at("epoch").get<std::string>(), std::to_string(e1 + 1));
  EXPECT_EQ(h.events("round").back().at("round"), 1);

  // Peer 3 leaves; peer 1 goes silent past the heartbeat timeout; peer 2 loses its connection.
  h.feed(3, w::C2M_Leave{});
  ASSERT_EQ(h.events("left").size(), 1u);
  EXPECT_EQ(h.events("left")[0].at("address"), "10.0.0.3:5000");
  ASSERT_FALSE(h.events("view").empty());
  EXPECT_EQ(h.events("view").back().at("size"), 2);

  h.now += kTimeoutUs / 2;
  h.feed(2, w::C2M_Heartbeat{});
  h.now += kTimeoutUs / 2;
  h.tick();
  ASSERT_EQ(h.events("evicted").size(), 1u);
  EXPECT_EQ(h.events("evicted")[0].at("address"), "10.0.0.1:5000");
  EXPECT_NE(h.events("evicted")[0].at("reason").get<std::string>().find("heartbeat timeout"), std::string::npos);

  h.disconnect(2);
  ASSERT_EQ(h.events("closed").size(), 1u);
  EXPECT_EQ(h.events("closed")[0].at("address"), "10.0.0.2:5000");
  EXPECT_NE(h.events("closed")[0].at("reason").get<std::string>().find("closed by the peer"), std::string::npos);
  EXPECT_EQ(h.events("view").back().at("size"), 0);
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "coord_runlog_XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
    path = tmpl;
  }
  ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
  std::string path;
};

TEST(CoordRunLog, ServerAppendsToTheFileAcrossRestarts) {
  TempDir dir;
  CoordinatorServerOptions options;
  options.token = "run-token";
  options.log_path = dir.path + "/run.jsonl";
  for (int incarnation = 0; incarnation < 2; ++incarnation) {
    auto server = CoordinatorServer::start(options);
    ASSERT_TRUE(server) << server.status().to_string();
    (*server)->stop();  // run() sees the stop at once
    ASSERT_TRUE((*server)->run().is_ok());
  }
  const std::vector<std::string> lines = read_lines(options.log_path);
  std::vector<std::string> kinds;
  for (const std::string& line : lines) kinds.push_back(json::parse(line).at("event"));
  EXPECT_EQ(kinds, (std::vector<std::string>{"started", "stopped", "restarted", "stopped"}));
  const json first = json::parse(lines.at(0));
  EXPECT_GT(first.at("t").get<double>(), 1.6e9);  // unix seconds
  EXPECT_NE(first.at("address").get<std::string>().find("127.0.0.1:"), std::string::npos);
}

TEST(CoordRunLog, UnwritableLogPathFailsAtStartNamingThePath) {
  CoordinatorServerOptions options;
  options.token = "run-token";
  options.log_path = "/nonexistent-dir-for-meridian-test/run.jsonl";
  auto server = CoordinatorServer::start(options);
  ASSERT_FALSE(server);
  EXPECT_NE(server.status().message().find(options.log_path), std::string::npos) << server.status().to_string();
  EXPECT_NE(server.status().hint().find("--log"), std::string::npos);
}


TEST(CoordRunLog, TheLastSyncEventsRevisionIsTheRunsProgress) {
  LogEvent sync;
  sync.kind = "sync";
  sync.revision = 41;
  LogEvent older = sync;
  older.revision = 40;
  LogEvent warning;
  warning.kind = "warning";
  warning.revision = 99;
  const std::string tricky = "a message saying \"event\":\"sync\",\"revision\":12345";
  std::string log = "tial line\n" + run_log_line(1, "s", older) + "\n" + run_log_line(2, "s", sync) + "\n" +
                    run_log_line(3, "w", warning) + "\n" + run_log_line(4, tricky, LogEvent{}) + "\n";
  EXPECT_EQ(last_elected_revision(log), 41u);
  EXPECT_EQ(last_elected_revision(""), 0u);
  EXPECT_EQ(last_elected_revision(run_log_line(4, tricky, LogEvent{})), 0u);
  log.pop_back();  // no final newline: the same
  EXPECT_EQ(last_elected_revision(log), 41u);
}

TEST(CoordRunLog, ARestartedDaemonResumesTheRunsProgressFromItsLog) {
  TempDir dir;
  CoordinatorServerOptions options;
  options.token = "run-token";
  options.log_path = dir.path + "/run.jsonl";
  LogEvent sync;
  sync.kind = "sync";
  sync.revision = 5692;
  {
    std::ofstream out(options.log_path);
    out << run_log_line(1, "sync op 1 of epoch 3: elected 5 buffers, revision 5692", sync) << "\n";
  }
  auto server = CoordinatorServer::start(options);
  ASSERT_TRUE(server) << server.status().to_string();
  (*server)->stop();
  ASSERT_TRUE((*server)->run().is_ok());
  const std::vector<std::string> lines = read_lines(options.log_path);
  ASSERT_GE(lines.size(), 2u);
  const json restarted = json::parse(lines.at(1));
  EXPECT_EQ(restarted.at("event"), "restarted");
  EXPECT_EQ(restarted.at("revision"), 5692);
  EXPECT_NE(restarted.at("msg").get<std::string>().find("revision 5692"), std::string::npos);
}

}  // namespace
