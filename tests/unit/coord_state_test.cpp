// Unit tests of the coordinator's pure state machine (src/coord/coordinator_state.h): the join
// barrier, eviction on heartbeat timeout with a simulated clock, graceful leave, the one final
// status of an operation, and re-population after a restart. No sockets, no sleeps.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "coord/coordinator_state.h"

namespace {

using namespace meridian::coord;
namespace w = meridian::net::membership;

constexpr int64_t kTimeoutUs = 1'000'000;

CoordinatorConfig config() {
  CoordinatorConfig c;
  c.heartbeat_timeout_us = kTimeoutUs;
  c.heartbeat_interval_us = kTimeoutUs / 4;
  return c;
}

// Drives a CoordinatorState and sorts its actions by connection.
class Harness {
 public:
  explicit Harness(CoordinatorConfig c = config()) : state(c) {}

  void feed(ConnId conn, w::ControlMessage m) { take(state.handle(EvMessage{conn, std::move(m)}, now)); }
  void disconnect(ConnId conn) { take(state.handle(EvDisconnected{conn, "test"}, now)); }
  void tick() { take(state.handle(EvTick{}, now)); }

  // Registers a new peer on `conn`; returns its id.
  PeerId join(ConnId conn, const std::string& address, PeerId previous = kNoPeer, w::View held = {}) {
    feed(conn, w::C2M_Join{previous, address, std::move(held)});
    auto welcome = last<w::M2C_Welcome>(conn);
    EXPECT_TRUE(welcome.has_value());
    return welcome ? welcome->peer_id : kNoPeer;
  }

  template <typename T>
  std::vector<T> sent(ConnId conn) const {
    std::vector<T> out;
    auto it = sent_.find(conn);
    if (it == sent_.end()) return out;
    for (const w::ControlMessage& m : it->second) {
      if (const T* t = std::get_if<T>(&m)) out.push_back(*t);
    }
    return out;
  }
  template <typename T>
  std::optional<T> last(ConnId conn) const {
    std::vector<T> all = sent<T>(conn);
    if (all.empty()) return std::nullopt;
    return all.back();
  }
  // The last barrier answer sent on conn (joiners are also told the run's view, barrier false).
  std::optional<w::M2C_View> last_barrier(ConnId conn) const {
    std::optional<w::M2C_View> out;
    for (const w::M2C_View& v : sent<w::M2C_View>(conn))
      if (v.barrier) out = v;
    return out;
  }
  bool closed(ConnId conn) const { return closed_.count(conn) != 0; }
  void clear() { sent_.clear(); }

  CoordinatorState state;
  int64_t now = 0;

 private:
  void take(const std::vector<Action>& actions) {
    for (const Action& a : actions) {
      if (a.kind == Action::Kind::kSend) sent_[a.conn].push_back(a.message);
      if (a.kind == Action::Kind::kClose) closed_.insert(a.conn);
    }
  }
  std::map<ConnId, std::vector<w::ControlMessage>> sent_;
  std::set<ConnId> closed_;
};

std::vector<PeerId> ids(const w::View& v) {
  std::vector<PeerId> out;
  for (const auto& m : v.members) out.push_back(m.peer_id);
  return out;
}

// Three peers form a view; each keeps heartbeating at `now`.
void form_view(Harness& h, size_t n) {
  for (size_t i = 0; i < n; ++i) h.join(10 + i, "127.0.0.1:" + std::to_string(5000 + i));
  for (size_t i = 0; i < n; ++i) h.feed(10 + i, w::C2M_UpdateTopology{0, static_cast<uint32_t>(n)});
  if (h.state.view().members.empty()) {  // a restarted coordinator's grace (known_revision > 0)
    h.now += kTimeoutUs;
    for (size_t i = 0; i < n; ++i) h.feed(10 + i, w::C2M_Heartbeat{});
    h.tick();
  }
}

TEST(CoordState, JoinersWaitForTheBarrierOfAllMembers) {
  Harness h;
  const PeerId a = h.join(1, "127.0.0.1:1001");
  const PeerId b = h.join(2, "127.0.0.1:1002");
  EXPECT_NE(a, b);
  EXPECT_EQ(h.state.phase(), Phase::kEmpty);
  // Bootstrap: min_members 2 holds the barrier until both are there.
  h.feed(1, w::C2M_UpdateTopology{0, 2});
  EXPECT_FALSE(h.last<w::M2C_View>(1).has_value());
  EXPECT_EQ(h.state.phase(), Phase::kBarrier);
  h.feed(2, w::C2M_UpdateTopology{0, 2});
  auto va = h.last<w::M2C_View>(1), vb = h.last<w::M2C_View>(2);
  ASSERT_TRUE(va && vb);
  EXPECT_TRUE(va->barrier);
  EXPECT_EQ(va->view, vb->view);
  EXPECT_EQ(ids(va->view), (std::vector<PeerId>{a, b}));
  const uint64_t e1 = va->view.epoch;
  EXPECT_GT(e1, 0u);
  EXPECT_EQ(h.state.phase(), Phase::kStable);

  // A joiner at the barrier is not admitted while one member has not called update_topology.
  h.clear();
  const PeerId c = h.join(3, "127.0.0.1:1003");
  h.feed(3, w::C2M_UpdateTopology{0, 0});
  h.feed(1, w::C2M_UpdateTopology{e1, 0});
  EXPECT_FALSE(h.last_barrier(3).has_value());
  EXPECT_FALSE(h.last<w::M2C_View>(1).has_value());
  EXPECT_EQ(h.state.view().epoch, e1);
  h.feed(2, w::C2M_UpdateTopology{e1, 0});
  for (ConnId conn : {1, 2, 3}) {
    auto v = h.last<w::M2C_View>(conn);
    ASSERT_TRUE(v) << conn;
    EXPECT_TRUE(v->barrier);
    EXPECT_EQ(v->view.epoch, e1 + 1);
    EXPECT_EQ(ids(v->view), (std::vector<PeerId>{a, b, c}));  // members keep their ranks
  }
  // A barrier without joiners answers with the same view.
  h.clear();
  for (ConnId conn : {1, 2, 3}) h.feed(conn, w::C2M_UpdateTopology{e1 + 1, 0});
  auto same = h.last<w::M2C_View>(3);
  ASSERT_TRUE(same);
  EXPECT_EQ(same->view.epoch, e1 + 1);
}

TEST(CoordState, BarrierWithoutAdmissionsKeepsJoinersWaiting) {
  Harness h;
  form_view(h, 2);
  const uint64_t e = h.state.view().epoch;
  const auto members = ids(h.state.view());
  h.clear();
  const PeerId joiner = h.join(3, "127.0.0.1:1003");
  h.feed(3, w::C2M_UpdateTopology{0, 0});
  // One member retries mid-round and asks for no admissions: the barrier completes for the
  // members alone, the joiner keeps waiting.
  h.feed(10, w::C2M_UpdateTopology{e, 0, false});
  h.feed(11, w::C2M_UpdateTopology{e, 0});
  auto v = h.last<w::M2C_View>(10);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->view.epoch, e);
  EXPECT_EQ(ids(v->view), members);
  // Both members hear that one joiner was held back (diloco.overlap meets again to admit it).
  EXPECT_EQ(v->joiners_waiting, 1u);
  ASSERT_TRUE(h.last<w::M2C_View>(11));
  EXPECT_EQ(h.last<w::M2C_View>(11)->joiners_waiting, 1u);
  EXPECT_FALSE(h.last_barrier(3).has_value());
  auto told = h.last<w::M2C_View>(3);  // the joiner hears that the run went on without it
  ASSERT_TRUE(told);
  EXPECT_EQ(told->view, h.state.view());
  // The next ordinary barrier admits it.
  h.clear();
  h.feed(10, w::C2M_UpdateTopology{e, 0});
  h.feed(11, w::C2M_UpdateTopology{e, 0});
  auto admitted = h.last<w::M2C_View>(3);
  ASSERT_TRUE(admitted);
  EXPECT_EQ(admitted->view.epoch, e + 1);
  EXPECT_EQ(admitted->joiners_waiting, 0u);
  EXPECT_EQ(ids(admitted->view).back(), joiner);
}

// A joiner of a running run learns the run's view at once and at every round start, so it
// can tell a long round (keep waiting) from a new run that lacks nodes (give up).
TEST(CoordState, JoinerOfARunningRunIsToldTheRunsView) {
  Harness h;
  const PeerId first = h.join(1, "127.0.0.1:1001");
  h.feed(1, w::C2M_UpdateTopology{0, 2});
  EXPECT_FALSE(h.last<w::M2C_View>(1).has_value()) << "a new run has no view to tell";
  h.join(2, "127.0.0.1:1002");
  h.feed(2, w::C2M_UpdateTopology{0, 2});
  const w::View run = h.state.view();
  ASSERT_EQ(ids(run).size(), 2u);
  EXPECT_EQ(ids(run)[0], first);
  h.clear();
  const PeerId joiner = h.join(3, "127.0.0.1:1003");
  auto told = h.last<w::M2C_View>(3);
  ASSERT_TRUE(told);
  EXPECT_FALSE(told->barrier);
  EXPECT_EQ(told->view, run);
  for (const auto& m : told->view.members) EXPECT_NE(m.peer_id, joiner);
  EXPECT_TRUE(h.sent<w::M2C_View>(1).empty()) << "members hear nothing new";
  // A member lost: the shrunk view reaches the joiner too.
  h.clear();
  h.disconnect(2);
  told = h.last<w::M2C_View>(3);
  ASSERT_TRUE(told);
  EXPECT_FALSE(told->barrier);
  EXPECT_EQ(told->view, h.state.view());
  EXPECT_EQ(ids(told->view), (std::vector<PeerId>{first}));
}

TEST(CoordState, SilentPeerEvictedAtTheHeartbeatTimeout) {
  Harness h;
  form_view(h, 3);
  const uint64_t e = h.state.view().epoch;
  h.clear();
  // Peers 10 and 11 heartbeat; 12 is silent (frozen).
  for (int step = 1; step <= 8; ++step) {
    h.now = step * kTimeoutUs / 8 - 1;
    h.feed(10, w::C2M_Heartbeat{});
    h.feed(11, w::C2M_Heartbeat{});
    h.tick();
    if (h.now < kTimeoutUs) {
      EXPECT_EQ(h.state.view().epoch, e) << "evicted early at " << h.now;
    }
  }
  EXPECT_EQ(h.state.next_deadline_us(), kTimeoutUs);
  h.now = kTimeoutUs;
  h.tick();
  EXPECT_EQ(h.state.view().epoch, e + 1);
  EXPECT_EQ(h.state.view().members.size(), 2u);
  EXPECT_TRUE(h.closed(12));
  auto pushed = h.last<w::M2C_View>(10);
  ASSERT_TRUE(pushed);
  EXPECT_FALSE(pushed->barrier);  // pushed at once, not a barrier answer
  EXPECT_EQ(pushed->view.epoch, e + 1);
  EXPECT_FALSE(h.last<w::M2C_View>(12).has_value());
}

TEST(CoordState, GracefulLeaveAnnouncedAtOnce) {
  Harness h;
  form_view(h, 3);
  const uint64_t e = h.state.view().epoch;
  h.clear();
  h.feed(11, w::C2M_Leave{});
  EXPECT_TRUE(h.closed(11));
  EXPECT_EQ(h.state.view().epoch, e + 1);
  auto v = h.last<w::M2C_View>(10);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->view.members.size(), 2u);
  // A closed connection (a killed peer) is the same, without waiting for the timeout.
  h.disconnect(12);
  EXPECT_EQ(h.state.view().epoch, e + 2);
  EXPECT_EQ(h.state.view().members.size(), 1u);
}

TEST(CoordState, OperationGetsExactlyOneFinalStatus) {
  Harness h;
  form_view(h, 3);
  const uint64_t e = h.state.view().epoch;
  h.clear();
  // All ok: one final ok to every member, sent when the last report arrives.
  for (ConnId c : {10, 11, 12}) h.feed(c, w::C2M_OpBegin{e, 1});
  h.feed(10, w::C2M_OpResult{e, 1, true, ""});
  h.feed(11, w::C2M_OpResult{e, 1, true, ""});
  EXPECT_TRUE(h.sent<w::M2C_OpFinal>(10).empty());
  h.feed(12, w::C2M_OpResult{e, 1, true, ""});
  for (ConnId c : {10, 11, 12}) {
    ASSERT_EQ(h.sent<w::M2C_OpFinal>(c).size(), 1u);
    EXPECT_TRUE(h.sent<w::M2C_OpFinal>(c)[0].ok);
  }
  // One failure aborts for everyone, even those that reported ok, and a later ok report
  // cannot change it.
  h.clear();
  h.feed(10, w::C2M_OpResult{e, 2, true, ""});
  h.feed(11, w::C2M_OpResult{e, 2, false, "peer_lost"});
  h.feed(12, w::C2M_OpResult{e, 2, true, ""});
  EXPECT_EQ(h.state.final_of(e, 2), std::optional<bool>(false));
  ASSERT_EQ(h.sent<w::M2C_OpFinal>(10).size(), 1u);
  EXPECT_FALSE(h.sent<w::M2C_OpFinal>(10)[0].ok);
  for (const auto& f : h.sent<w::M2C_OpFinal>(12)) EXPECT_FALSE(f.ok);
  // A member dying mid-operation aborts it with the view change.
  h.clear();
  h.feed(10, w::C2M_OpBegin{e, 3});
  h.feed(10, w::C2M_OpResult{e, 3, true, ""});
  h.disconnect(12);
  EXPECT_EQ(h.state.final_of(e, 3), std::optional<bool>(false));
  ASSERT_EQ(h.sent<w::M2C_OpFinal>(10).size(), 1u);
  EXPECT_NE(h.sent<w::M2C_OpFinal>(10)[0].detail.find("view changed"), std::string::npos);
  // An operation of an old epoch is refused at once.
  h.clear();
  h.feed(11, w::C2M_OpBegin{e, 4});
  EXPECT_EQ(h.state.final_of(e, 4), std::optional<bool>(false));
}

TEST(CoordState, RestartedCoordinatorIsRepopulatedByItsPeers) {
  Harness before;
  form_view(before, 3);
  const w::View held = before.state.view();

  CoordinatorConfig c = config();
  c.incarnation = 7;
  Harness h(c);  // a fresh coordinator on the same address
  // The first re-registering peer re-creates its view, same epoch, same ranks.
  EXPECT_EQ(h.join(20, held.members[1].address, held.members[1].peer_id, held), held.members[1].peer_id);
  EXPECT_EQ(h.state.view(), held);
  auto v = h.last<w::M2C_View>(20);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->view, held);
  EXPECT_EQ(h.join(21, held.members[0].address, held.members[0].peer_id, held), held.members[0].peer_id);
  EXPECT_EQ(h.state.view().epoch, held.epoch);
  // A brand-new peer gets an id nobody in the view holds.
  const PeerId fresh = h.join(22, "127.0.0.1:9999");
  for (const auto& m : held.members) EXPECT_NE(fresh, m.peer_id);
  // Member 2 never comes back: evicted after one timeout, and the new epoch is above anything
  // the previous incarnation could have published.
  h.now = kTimeoutUs / 2;
  h.feed(20, w::C2M_Heartbeat{});
  h.feed(21, w::C2M_Heartbeat{});
  h.feed(22, w::C2M_Heartbeat{});
  h.now = kTimeoutUs;
  h.tick();
  EXPECT_EQ(ids(h.state.view()), (std::vector<PeerId>{held.members[0].peer_id, held.members[1].peer_id}));
  EXPECT_GE(h.state.view().epoch, uint64_t{7} << kEpochSequenceBits);
}

// Seen in a chaos soak: after a coordinator restart a joiner registered first and was admitted
// into a view of its own; the members that re-registered a moment later, mid-round, became
// joiners of the next view beside it, a node at its round start.
TEST(CoordState, RestartedCoordinatorAdmitsNoJoinerBeforeTheMembersCanReattach) {
  const w::View held{(uint64_t{6} << kEpochSequenceBits) + 3, 4, {{5, "127.0.0.1:5005"}, {6, "127.0.0.1:5006"}}};
  CoordinatorConfig c = config();
  c.incarnation = 7;
  c.known_revision = 12;  // the run log says the run has progress
  Harness h(c);
  const PeerId joiner = h.join(30, "127.0.0.1:9999");
  h.feed(30, w::C2M_UpdateTopology{0, 0});
  EXPECT_FALSE(h.last_barrier(30).has_value()) << "a joiner alone was admitted before the members could re-attach";
  // A member re-attaches: its view is re-created, the joiner stays a joiner.
  EXPECT_EQ(h.join(20, held.members[0].address, held.members[0].peer_id, held), held.members[0].peer_id);
  EXPECT_EQ(h.state.view(), held);
  EXPECT_FALSE(h.last_barrier(30).has_value());
  for (const auto& m : h.state.view().members) EXPECT_NE(m.peer_id, joiner);
}

TEST(CoordState, RestartedCoordinatorAdmitsTheJoinerOnceNoMemberCameBackInTime) {
  CoordinatorConfig c = config();
  c.incarnation = 7;
  c.known_revision = 12;
  Harness h(c);
  const PeerId joiner = h.join(30, "127.0.0.1:9999");
  h.feed(30, w::C2M_UpdateTopology{0, 0});
  EXPECT_FALSE(h.last_barrier(30).has_value());
  EXPECT_EQ(h.state.next_deadline_us(), kTimeoutUs);  // the daemon ticks when the grace ends
  h.now = kTimeoutUs - 1;
  h.feed(30, w::C2M_Heartbeat{});
  h.now = kTimeoutUs;
  h.tick();
  auto v = h.last_barrier(30);
  ASSERT_TRUE(v);
  EXPECT_EQ(ids(v->view), (std::vector<PeerId>{joiner}));
}

// Found by the simulation: a newcomer registered with a fresh coordinator before
// the first re-registering member, got an id that the re-created view gives to someone else.
TEST(CoordState, RecreatedViewWinsAnIdClashWithANewcomer) {
  Harness h;
  const PeerId newcomer = h.join(1, "127.0.0.1:7000");
  w::View held{5, 2, {{newcomer, "127.0.0.1:6000"}, {newcomer + 1, "127.0.0.1:6001"}}};
  h.join(2, "127.0.0.1:6001", newcomer + 1, held);
  EXPECT_TRUE(h.closed(1)) << "the newcomer must register again";
  EXPECT_EQ(h.state.view(), held);
  const PeerId again = h.join(3, "127.0.0.1:7000", newcomer);
  for (const auto& m : held.members) EXPECT_NE(again, m.peer_id);
}

// Found by the simulation: the old coordinator told some members "op ok" and died
// before telling the others; the survivors of the restart must hear the same.
TEST(CoordState, RestartedCoordinatorLearnsAFinalStatusFromAReregisteringPeer) {
  Harness h;
  w::View held{5, 2, {{0, "127.0.0.1:6000"}, {1, "127.0.0.1:6001"}}};
  const uint64_t op = (uint64_t{2} << 32) | 1;
  h.join(10, "127.0.0.1:6000", 0, held);           // still waits for op's final
  h.feed(10, w::C2M_OpBegin{5, op});
  h.feed(10, w::C2M_OpResult{5, op, true, ""});
  EXPECT_TRUE(h.sent<w::M2C_OpFinal>(10).empty());
  w::C2M_Join told{1, "127.0.0.1:6001", held};     // was told "ok" before the crash
  told.last_final_epoch = 5;
  told.last_final_op_id = op;
  told.last_final_ok = true;
  h.feed(11, told);
  ASSERT_EQ(h.sent<w::M2C_OpFinal>(10).size(), 1u);
  EXPECT_TRUE(h.sent<w::M2C_OpFinal>(10)[0].ok);
  EXPECT_EQ(h.state.final_of(5, op), std::optional<bool>(true));
}

TEST(CoordState, EveryBarrierStartsANewRound) {
  Harness h;
  form_view(h, 2);
  const w::View first = h.state.view();
  EXPECT_EQ(first.round, 1u);
  h.feed(10, w::C2M_UpdateTopology{first.epoch, 0});
  h.feed(11, w::C2M_UpdateTopology{first.epoch, 0});
  EXPECT_EQ(h.state.view().epoch, first.epoch);
  EXPECT_EQ(h.state.view().round, 2u);  // same members, fresh operation numbering
}

TEST(CoordState, MessagesOutOfOrderCloseTheConnection) {
  Harness h;
  h.feed(1, w::C2M_Heartbeat{});
  EXPECT_TRUE(h.closed(1));
  h.join(2, "127.0.0.1:1");
  h.feed(2, w::C2M_Join{kNoPeer, "127.0.0.1:1", {}});
  EXPECT_TRUE(h.closed(2));
  h.join(3, "127.0.0.1:3");
  h.feed(3, w::M2C_Welcome{});
  EXPECT_TRUE(h.closed(3));
}

}  // namespace

// ---- shared-state sync ---------------------------------------------------------------------

namespace st {

namespace net = meridian::net;

net::PeerReport state(uint64_t revision, std::vector<std::pair<std::string, uint64_t>> buffers) {
  net::PeerReport r;
  r.revision = revision;
  for (auto& [name, h] : buffers) r.buffers.push_back({name, net::BufferDtype::kF32, 64, {h, h}});
  r.votes = !r.buffers.empty();
  return r;
}

uint64_t hash_of(const w::M2C_SyncElected& e, const std::string& name) {
  for (const auto& b : e.elected.buffers) {
    if (b.name == name) return b.hash.lo;
  }
  return 0;
}


TEST(CoordStateSync, AStateBehindTheRunsWaitsForAHolderToComeBack) {
  CoordinatorConfig c = config();
  c.holder_wait_us = 10 * kTimeoutUs;
  Harness h(c);
  // The run reaches revision 7 on one node (10); a fresh joiner (11) waits at the barrier.
  h.join(10, "127.0.0.1:5000");
  h.feed(10, w::C2M_UpdateTopology{0, 1});
  uint64_t e = h.state.view().epoch;
  h.feed(10, w::C2M_SyncReport{e, 1, st::state(7, {{"w", 7}})});
  ASSERT_TRUE(h.last<w::M2C_SyncElected>(10));
  h.feed(10, w::C2M_OpResult{e, 1, true, ""});
  h.join(11, "127.0.0.1:5001");
  h.feed(11, w::C2M_UpdateTopology{0, 0});
  // The holder freezes and is evicted; the joiner is admitted alone and has nothing.
  h.now += kTimeoutUs / 2;
  h.feed(11, w::C2M_Heartbeat{});
  h.now += kTimeoutUs / 2;
  h.tick();
  // (Admitted at once if the removal re-checked its barrier, else at its next call.)
  if (h.state.view().members.empty()) h.feed(11, w::C2M_UpdateTopology{0, 0});
  ASSERT_EQ(ids(h.state.view()).size(), 1u);
  e = h.state.view().epoch;
  h.clear();
  h.feed(11, w::C2M_SyncReport{e, 1, st::state(0, {})});
  // Refused, not elected: a run of one empty node would start over from round 1.
  EXPECT_FALSE(h.last<w::M2C_SyncElected>(11).has_value());
  auto f = h.last<w::M2C_OpFinal>(11);
  ASSERT_TRUE(f);
  EXPECT_FALSE(f->ok);
  EXPECT_NE(f->detail.find("revision 7"), std::string::npos) << f->detail;
  // The holder comes back (a joiner now, not a voter): admitted, its state wins.
  h.now += 3 * kTimeoutUs;
  h.feed(11, w::C2M_Heartbeat{});
  h.join(12, "127.0.0.1:5000");
  h.feed(12, w::C2M_UpdateTopology{0, 0});
  h.feed(11, w::C2M_UpdateTopology{e, 0});
  ASSERT_EQ(h.state.view().members.size(), 2u);
  e = h.state.view().epoch;
  h.clear();
  net::PeerReport back = st::state(7, {{"w", 7}});
  back.votes = true;  // it believes it still is a member: the coordinator knows better
  h.feed(11, w::C2M_SyncReport{e, 1, st::state(0, {})});
  h.feed(12, w::C2M_SyncReport{e, 1, back});
  auto el = h.last<w::M2C_SyncElected>(11);
  ASSERT_TRUE(el);
  EXPECT_EQ(el->elected.revision, 7u);
  EXPECT_EQ(st::hash_of(*el, "w"), 7u);
}

TEST(CoordStateSync, AfterTheHolderWaitTheStateIsLostAndTheRunGoesOn) {
  CoordinatorConfig c = config();
  c.holder_wait_us = 5 * kTimeoutUs;
  c.known_revision = 40;  // read from the run log by a restarted daemon
  Harness h(c);
  form_view(h, 2);  // fresh nodes after a restart: the holders of revision 40 are gone
  const uint64_t e = h.state.view().epoch;
  uint64_t op = 1;
  auto sync = [&](uint64_t revision) {
    h.clear();
    h.feed(10, w::C2M_SyncReport{e, op, st::state(revision, {{"w", revision}})});
    h.feed(11, w::C2M_SyncReport{e, op, st::state(revision, {{"w", revision}})});
    ++op;
    return h.last<w::M2C_SyncElected>(10).has_value();
  };
  EXPECT_FALSE(sync(39));
  for (int i = 0; i < 4; ++i) {
    h.now += kTimeoutUs;
    h.feed(10, w::C2M_Heartbeat{});
    h.feed(11, w::C2M_Heartbeat{});
    EXPECT_FALSE(sync(39)) << i;
  }
  h.now += kTimeoutUs;
  h.feed(10, w::C2M_Heartbeat{});
  h.feed(11, w::C2M_Heartbeat{});
  EXPECT_TRUE(sync(39));  // given up: the run goes on from 39
  EXPECT_TRUE(sync(39));  // and 39 is the run's progress now
  EXPECT_TRUE(sync(40));
  EXPECT_FALSE(sync(39));  // behind again: the wait starts over
}

TEST(CoordStateSync, FreshNodesAloneNeverStartTheRunOverEvenPastTheHolderWait) {
  CoordinatorConfig c = config();
  c.holder_wait_us = 2 * kTimeoutUs;
  c.known_revision = 40;
  Harness h(c);
  form_view(h, 2);  // both fresh: no state at all
  const uint64_t e = h.state.view().epoch;
  uint64_t op = 1;
  auto sync_fresh = [&] {
    h.clear();
    h.feed(10, w::C2M_SyncReport{e, op, st::state(0, {})});
    h.feed(11, w::C2M_SyncReport{e, op, st::state(0, {})});
    auto f = h.last<w::M2C_OpFinal>(10);
    ++op;
    EXPECT_TRUE(!f || f->ok || f->detail.find("--resume") != std::string::npos) << f->detail;
    return h.last<w::M2C_SyncElected>(10).has_value();
  };
  for (int i = 0; i < 6; ++i) {  // three times the holder wait
    EXPECT_FALSE(sync_fresh()) << i;
    h.now += kTimeoutUs;
    h.feed(10, w::C2M_Heartbeat{});
    h.feed(11, w::C2M_Heartbeat{});
  }
  // A node resumed from a checkpoint of round 30 comes: past the wait, the run goes on from it.
  h.clear();
  h.feed(10, w::C2M_SyncReport{e, op, st::state(30, {{"w", 30}})});
  h.feed(11, w::C2M_SyncReport{e, op, st::state(0, {})});
  auto el = h.last<w::M2C_SyncElected>(11);
  ASSERT_TRUE(el);
  EXPECT_EQ(el->elected.revision, 30u);
}

}  // namespace st

namespace net = meridian::net;

TEST(CoordStateSync, ElectsOnceEveryMemberReportedThenOneFinal) {
  Harness h;
  form_view(h, 3);
  const uint64_t e = h.state.view().epoch;
  h.clear();
  const uint64_t op = 1;
  h.feed(10, w::C2M_SyncReport{e, op, st::state(5, {{"m", 2}, {"w", 1}})});
  h.feed(11, w::C2M_SyncReport{e, op, st::state(5, {{"m", 2}, {"w", 1}})});
  EXPECT_FALSE(h.last<w::M2C_SyncElected>(10).has_value());  // 12 has not reported yet
  h.feed(12, w::C2M_SyncReport{e, op, st::state(4, {{"m", 2}, {"w", 9}})});  // stale in "w"
  for (ConnId c : {10, 11, 12}) {
    auto el = h.last<w::M2C_SyncElected>(c);
    ASSERT_TRUE(el) << c;
    EXPECT_EQ(el->elected.revision, 5u);
    EXPECT_EQ(st::hash_of(*el, "w"), 1u);
    EXPECT_EQ(el->elected.missing_on(h.state.view().members[2].peer_id).size(), 1u);  // only "w"
  }
  for (ConnId c : {10, 11}) h.feed(c, w::C2M_OpResult{e, op, true, ""});
  EXPECT_FALSE(h.state.final_of(e, op).has_value());
  h.feed(12, w::C2M_OpResult{e, op, true, ""});
  EXPECT_EQ(h.state.final_of(e, op), std::optional<bool>(true));
  for (ConnId c : {10, 11, 12}) EXPECT_EQ(h.sent<w::M2C_OpFinal>(c).size(), 1u);
  // A report sent again (after a reconnect) gets the final status, not a second election.
  h.clear();
  h.feed(12, w::C2M_SyncReport{e, op, st::state(4, {{"w", 9}})});
  EXPECT_FALSE(h.last<w::M2C_SyncElected>(12).has_value());
  auto f = h.last<w::M2C_OpFinal>(12);
  ASSERT_TRUE(f);
  EXPECT_TRUE(f->ok);
}

TEST(CoordStateSync, ReportSentAgainBeforeTheFinalGetsTheSameElection) {
  Harness h;
  form_view(h, 2);
  const uint64_t e = h.state.view().epoch;
  h.feed(10, w::C2M_SyncReport{e, 1, st::state(1, {{"w", 1}})});
  h.feed(11, w::C2M_SyncReport{e, 1, st::state(1, {{"w", 1}})});
  auto first = h.last<w::M2C_SyncElected>(11);
  ASSERT_TRUE(first);
  h.clear();
  h.feed(11, w::C2M_SyncReport{e, 1, st::state(7, {{"w", 7}})});  // whatever it says now
  auto again = h.last<w::M2C_SyncElected>(11);
  ASSERT_TRUE(again);
  EXPECT_TRUE(*again == *first);
  EXPECT_FALSE(h.last<w::M2C_SyncElected>(10).has_value());  // only the one that asked
}

TEST(CoordStateSync, NonVotingJoinersDoNotVoteAwayTheState) {
  Harness h;
  form_view(h, 3);
  const uint64_t e = h.state.view().epoch;
  // A member that synced (votes) against two joiners with the same, different state that do
  // not vote yet (the Communicator clears the flag at admission): 2 against 1 if they voted.
  {
    net::PeerReport joiner = st::state(0, {{"w", 666}});
    joiner.votes = false;
    h.feed(10, w::C2M_SyncReport{e, 1, st::state(3, {{"w", 100}})});
    h.feed(11, w::C2M_SyncReport{e, 1, joiner});
    h.feed(12, w::C2M_SyncReport{e, 1, joiner});
  }
  auto el = h.last<w::M2C_SyncElected>(11);
  ASSERT_TRUE(el);
  EXPECT_EQ(st::hash_of(*el, "w"), 100u);
  EXPECT_EQ(el->elected.revision, 3u);
  EXPECT_EQ(el->elected.buffers[0].holders, (std::vector<PeerId>{h.state.view().members[0].peer_id}));
}

TEST(CoordStateSync, NobodyVotesThenEveryNonEmptyStateDoes) {
  Harness h;
  form_view(h, 3);
  const uint64_t e = h.state.view().epoch;
  // The start of a run: nobody has synced yet. Two agree, one is empty: the two win, and the
  // empty one does not make "absent" win either.
  net::PeerReport same = st::state(1, {{"w", 5}});
  same.votes = false;
  net::PeerReport empty = st::state(0, {});
  h.feed(10, w::C2M_SyncReport{e, 1, same});
  h.feed(11, w::C2M_SyncReport{e, 1, empty});
  h.feed(12, w::C2M_SyncReport{e, 1, same});
  auto el = h.last<w::M2C_SyncElected>(10);
  ASSERT_TRUE(el);
  ASSERT_EQ(el->elected.buffers.size(), 1u);
  EXPECT_EQ(st::hash_of(*el, "w"), 5u);
  EXPECT_EQ(el->elected.bytes_missing_on(h.state.view().members[1].peer_id), 64u);
}

TEST(CoordStateSync, MemberLostBeforeTheElectionAbortsWithOneFinal) {
  Harness h;
  form_view(h, 3);
  const uint64_t e = h.state.view().epoch;
  h.clear();
  h.feed(10, w::C2M_SyncReport{e, 1, st::state(1, {{"w", 1}})});
  h.feed(11, w::C2M_SyncReport{e, 1, st::state(1, {{"w", 1}})});
  h.disconnect(12);
  EXPECT_EQ(h.state.final_of(e, 1), std::optional<bool>(false));
  for (ConnId c : {10, 11}) {
    EXPECT_FALSE(h.last<w::M2C_SyncElected>(c).has_value());
    EXPECT_EQ(h.sent<w::M2C_OpFinal>(c).size(), 1u);
  }
  // During the transfer: a failure report aborts it, the others' ok does not revive it.
  const uint64_t e2 = h.state.view().epoch;
  h.clear();
  h.feed(10, w::C2M_SyncReport{e2, 2, st::state(1, {{"w", 1}})});
  h.feed(11, w::C2M_SyncReport{e2, 2, st::state(0, {})});
  ASSERT_TRUE(h.last<w::M2C_SyncElected>(11));
  h.feed(11, w::C2M_OpResult{e2, 2, false, "peer_lost (peer 0)"});
  h.feed(10, w::C2M_OpResult{e2, 2, true, ""});
  EXPECT_EQ(h.state.final_of(e2, 2), std::optional<bool>(false));
  EXPECT_EQ(h.sent<w::M2C_OpFinal>(10).size(), 2u);  // the abort, then the same again for its report
  for (const auto& f : h.sent<w::M2C_OpFinal>(10)) EXPECT_FALSE(f.ok);
}
