// Shared-state sync on the simulated network: the election's majority and tie-break rules, the
// striped plan, a new peer receiving everything, a stale peer receiving only what differs
// (bytes counted), corruption on the wire detected by the hash check, and a source crashing or
// freezing mid-transfer failing the sync with the receiver's state untouched, then a retry
// under the new view succeeding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/hash.h"
#include "net/state_sync/sim_state_sync.h"

namespace meridian::net {
namespace {

std::vector<std::byte> random_bytes(size_t n, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<std::byte> b(n);
  for (auto& x : b) x = static_cast<std::byte>(rng.next() & 0xff);
  return b;
}

// The state every up-to-date peer holds: buffers of awkward sizes (empty, one byte, not a
// multiple of the chunk, several chunks).
SharedState reference_state() {
  SharedState s;
  s.set_revision(7);
  s.put("empty", BufferDtype::kF32, std::vector<std::byte>{});
  s.put("one", BufferDtype::kU8, random_bytes(1, 1));
  s.put("outer.momentum", BufferDtype::kF32, random_bytes(100'003, 2));
  s.put("outer.weights", BufferDtype::kBf16, random_bytes(250'000, 3));
  return s;
}

std::vector<PeerId> ids(size_t n) {
  std::vector<PeerId> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<PeerId>(i);
  return v;
}

ElectedHashes elect_from(const std::vector<SharedState*>& states, const std::vector<PeerId>& view) {
  std::vector<PeerReport> reports;
  for (size_t r = 0; r < view.size(); ++r) reports.push_back(states[r]->report(view[r]));
  return elect(reports);
}

StateSyncOptions small_chunks(uint64_t sync_id) {
  return StateSyncOptions{.chunk_bytes = 16 << 10, .window_per_source = 4, .timeout_ms = 10'000, .sync_id = sync_id};
}

// A transport that flips one byte of the payload of the n-th state-sync chunk it receives:
// corruption on the wire that the TCP checksum missed.
class CorruptingTransport final : public Transport {
 public:
  CorruptingTransport(Transport& inner, int corrupt_chunk) : inner_(inner), corrupt_chunk_(corrupt_chunk) {}
  PeerId self() const override { return inner_.self(); }
  size_t peer_count() const override { return inner_.peer_count(); }
  size_t max_message_bytes() const override { return inner_.max_message_bytes(); }
  const Clock& clock() const override { return inner_.clock(); }
  NetStatus send(PeerId peer, std::vector<std::byte> bytes) override { return inner_.send(peer, std::move(bytes)); }
  NetStatus recv(Message* message, int64_t deadline_us) override {
    NetStatus st = inner_.recv(message, deadline_us);
    if (st.is_ok() && message->bytes.size() > kStateSyncHeaderBytes && chunks_seen_++ == corrupt_chunk_) {
      message->bytes[kStateSyncHeaderBytes + (message->bytes.size() - kStateSyncHeaderBytes) / 2] ^= std::byte{0x10};
      ++corrupted_;
    }
    return st;
  }
  int corrupted() const { return corrupted_; }

 private:
  Transport& inner_;
  int corrupt_chunk_;
  int chunks_seen_ = 0;
  int corrupted_ = 0;
};

// ---- Election -----------------------------------------------------------------------------------

BufferDigest digest(const std::string& name, uint64_t tag, uint64_t bytes = 8) {
  return BufferDigest{name, BufferDtype::kF32, bytes, Hash128{tag, tag}};
}

TEST(StateSyncElection, MajorityWinsAndHoldersAreListed) {
  std::vector<PeerReport> reports = {
      {.peer = 0, .revision = 3, .buffers = {digest("w", 1)}},
      {.peer = 1, .revision = 3, .buffers = {digest("w", 2)}},
      {.peer = 2, .revision = 3, .buffers = {digest("w", 2)}},
  };
  const ElectedHashes e = elect(reports);
  ASSERT_EQ(e.buffers.size(), 1u);
  EXPECT_EQ(e.buffers[0].hash, (Hash128{2, 2}));
  EXPECT_EQ(e.buffers[0].holders, (std::vector<PeerId>{1, 2}));
  EXPECT_EQ(e.revision, 3u);
  EXPECT_EQ(e.missing_on(0), (std::vector<size_t>{0}));
  EXPECT_TRUE(e.missing_on(1).empty());
  EXPECT_EQ(e.bytes_missing_on(0), 8u);
  EXPECT_EQ(e.forked, (std::vector<PeerId>{0}));  // same progress, another state: a fork
}

TEST(StateSyncElection, TieGoesToTheVersionHeldByTheLowestPeerId) {
  // Two versions at the same revision, two holders each; peer 1 is the lowest id holding 9.
  std::vector<PeerReport> reports = {
      {.peer = 4, .revision = 6, .buffers = {digest("w", 8)}},
      {.peer = 1, .revision = 6, .buffers = {digest("w", 9)}},
      {.peer = 2, .revision = 6, .buffers = {digest("w", 8)}},
      {.peer = 3, .revision = 6, .buffers = {digest("w", 9)}},
  };
  const ElectedHashes e = elect(reports);
  ASSERT_EQ(e.buffers.size(), 1u);
  EXPECT_EQ(e.buffers[0].hash, (Hash128{9, 9}));
  EXPECT_EQ(e.buffers[0].holders, (std::vector<PeerId>{1, 3}));
  EXPECT_EQ(e.revision, 6u);
  EXPECT_EQ(e.forked, (std::vector<PeerId>{2, 4}));
  // The result does not depend on the order of the reports.
  std::reverse(reports.begin(), reports.end());
  EXPECT_EQ(elect(reports).buffers[0].hash, (Hash128{9, 9}));
}

// The scenario that once threw away 144 rounds: a node trained on alone while another was
// frozen; the frozen one came back with the old state and won the 1:1 vote by its lower id.
// Progress comes first: the newer state wins whatever the ids and the votes.
TEST(StateSyncElection, TheNewestRevisionWinsWhateverTheVotes) {
  std::vector<PeerReport> reports = {
      {.peer = 0, .revision = 1723, .buffers = {digest("shape", 7), digest("theta", 1)}},  // back from SIGSTOP
      {.peer = 5, .revision = 1867, .buffers = {digest("shape", 7), digest("theta", 2)}},
  };
  ElectedHashes e = elect(reports);
  EXPECT_EQ(e.revision, 1867u);
  ASSERT_EQ(e.buffers.size(), 2u);
  EXPECT_EQ(e.buffers[1].name, "theta");
  EXPECT_EQ(e.buffers[1].hash, (Hash128{2, 2}));
  EXPECT_EQ(e.buffers[1].holders, (std::vector<PeerId>{5}));
  EXPECT_EQ(e.buffers[0].holders, (std::vector<PeerId>{0, 5}));  // an equal buffer needs no download
  EXPECT_EQ(e.missing_on(0), (std::vector<size_t>{1}));
  EXPECT_TRUE(e.forked.empty());  // behind is not a fork
  // Three old voters against one newer: still the newer.
  for (PeerId p : {1u, 2u, 3u}) reports.push_back({.peer = p, .revision = 1723, .buffers = {digest("shape", 7), digest("theta", 1)}});
  e = elect(reports);
  EXPECT_EQ(e.revision, 1867u);
  EXPECT_EQ(e.buffers[1].hash, (Hash128{2, 2}));
  // A non-voter at the voters' revision does not vote: a fork there is the voters' to decide.
  reports.push_back({.peer = 8, .revision = 1867, .votes = false, .buffers = {digest("shape", 7), digest("theta", 4)}});
  e = elect(reports);
  EXPECT_EQ(e.buffers[1].hash, (Hash128{2, 2}));
  EXPECT_TRUE(e.forked.empty());
  // A non-voter holding a newer state than every voter's carries the run's progress (the voters
  // started over, or fell behind, while it was away): its state wins, and its peers at that
  // revision vote on it; the voters behind download it.
  reports.push_back({.peer = 9, .revision = 5000, .votes = false, .buffers = {digest("shape", 7), digest("theta", 3)}});
  reports.push_back({.peer = 10, .revision = 5000, .votes = false, .buffers = {digest("shape", 7), digest("theta", 3)}});
  reports.push_back({.peer = 11, .revision = 5000, .votes = false, .buffers = {digest("shape", 7), digest("theta", 6)}});
  reports.push_back({.peer = 12, .revision = 9000, .votes = false, .buffers = {}});  // empty: never votes
  e = elect(reports);
  EXPECT_EQ(e.revision, 5000u);
  ASSERT_EQ(e.buffers.size(), 2u);
  EXPECT_EQ(e.buffers[1].hash, (Hash128{3, 3}));
  EXPECT_EQ(e.buffers[1].holders, (std::vector<PeerId>{9, 10}));
  EXPECT_EQ(e.forked, (std::vector<PeerId>{11}));
  EXPECT_EQ(e.missing_on(0), (std::vector<size_t>{1}));
  // Voters behind the newest do not vote on its buffers, not even as "absent".
  std::vector<PeerReport> absent = {
      {.peer = 0, .revision = 4, .buffers = {digest("a", 1)}},
      {.peer = 1, .revision = 4, .buffers = {digest("a", 1)}},
      {.peer = 2, .revision = 5, .buffers = {digest("a", 2), digest("b", 3)}},
  };
  e = elect(absent);
  ASSERT_EQ(e.buffers.size(), 2u);
  EXPECT_EQ(e.buffers[0].hash, (Hash128{2, 2}));
  EXPECT_EQ(e.buffers[1].name, "b");
}

TEST(StateSyncElection, SizeAndDtypeArePartOfTheVersion) {
  BufferDigest other_dtype = digest("w", 1);
  other_dtype.dtype = BufferDtype::kBf16;
  std::vector<PeerReport> reports = {
      {.peer = 0, .buffers = {digest("w", 1, 16)}},
      {.peer = 1, .buffers = {other_dtype}},
      {.peer = 2, .buffers = {digest("w", 1)}},
      {.peer = 3, .buffers = {digest("w", 1)}},
  };
  const ElectedHashes e = elect(reports);
  ASSERT_EQ(e.buffers.size(), 1u);
  EXPECT_EQ(e.buffers[0].bytes, 8u);
  EXPECT_EQ(e.buffers[0].dtype, BufferDtype::kF32);
  EXPECT_EQ(e.buffers[0].holders, (std::vector<PeerId>{2, 3}));
}

TEST(StateSyncElection, AbsentMajorityDropsTheBufferAndFreshJoinersDoNotVote) {
  std::vector<PeerReport> reports = {
      {.peer = 0, .buffers = {digest("a", 1)}},
      {.peer = 1, .buffers = {digest("a", 1), digest("stale", 3)}},
      {.peer = 2, .buffers = {digest("a", 1)}},
      // Three fresh joiners: without the votes rule they would out-vote nobody's "a" as absent.
      {.peer = 3, .votes = false, .buffers = {}},
      {.peer = 4, .votes = false, .buffers = {}},
      {.peer = 5, .votes = false, .buffers = {}},
  };
  const ElectedHashes e = elect(reports);
  ASSERT_EQ(e.buffers.size(), 1u);
  EXPECT_EQ(e.buffers[0].name, "a");
  EXPECT_EQ(e.missing_on(4), (std::vector<size_t>{0}));
  // A fresh state reports votes = false by itself.
  EXPECT_FALSE(SharedState().report(9).votes);
}

TEST(StateSyncElection, WithNoVoterTheNewestNonEmptyStateWins) {
  // A fresh joiner alone with two members back after an eviction (none has synced since): the
  // newest state wins, the empty joiner downloads it.
  std::vector<PeerReport> reports = {
      {.peer = 0, .revision = 0, .votes = false, .buffers = {}},
      {.peer = 1, .revision = 5692, .votes = false, .buffers = {digest("theta", 7)}},
      {.peer = 2, .revision = 5600, .votes = false, .buffers = {digest("theta", 8)}},
  };
  const ElectedHashes e = elect(reports);
  EXPECT_EQ(e.revision, 5692u);
  ASSERT_EQ(e.buffers.size(), 1u);
  EXPECT_EQ(e.buffers[0].hash, (Hash128{7, 7}));
  EXPECT_EQ(e.missing_on(0), (std::vector<size_t>{0}));
  EXPECT_EQ(e.missing_on(2), (std::vector<size_t>{0}));
  EXPECT_TRUE(e.forked.empty());
  // Nobody holds anything: nothing is elected.
  const ElectedHashes none = elect({{.peer = 3, .votes = false, .buffers = {}},
                                     {.peer = 4, .votes = false, .buffers = {}}});
  EXPECT_TRUE(none.buffers.empty());
  EXPECT_EQ(none.revision, 0u);
}

// ---- Plan ---------------------------------------------------------------------------------------

TEST(StateSyncPlan, StripesChunksOverHoldersAndCountsEachSourcesShare) {
  ElectedHashes e;
  e.buffers.push_back(ElectedBuffer{"w", BufferDtype::kF32, 10 * 100 + 1, Hash128{}, {0, 2}});
  const std::vector<PeerId> view = {0, 1, 2, 3};
  const SyncPlan plan = plan_sync(view, e, 100);
  EXPECT_TRUE(plan.downloads[0].empty());
  EXPECT_TRUE(plan.downloads[2].empty());
  ASSERT_EQ(plan.downloads[1].size(), 11u);
  ASSERT_EQ(plan.downloads[3].size(), 11u);
  uint64_t total = 0;
  for (size_t c = 0; c < 11; ++c) {
    // Rank 1 starts on holder index 1 (peer 2), rank 3 too; they alternate.
    EXPECT_EQ(plan.downloads[1][c].source, c % 2 == 0 ? 2u : 0u) << c;
    EXPECT_EQ(plan.downloads[1][c].offset, c * 100);
    total += plan.downloads[1][c].length;
  }
  EXPECT_EQ(total, 1001u);
  EXPECT_EQ(plan.downloads[1][10].length, 1u);
  EXPECT_EQ(plan.chunks_to_serve[0] + plan.chunks_to_serve[2], 22u);
  EXPECT_EQ(plan.chunks_to_serve[1] + plan.chunks_to_serve[3], 0u);
  EXPECT_FALSE(plan.unsourced_buffer.has_value());
}

// ---- Transfers ----------------------------------------------------------------------------------

TEST(StateSync, NewPeerReceivesEverythingAndMatchesTheSourceHash) {
  SimNetwork net(SimNetworkConfig{.peers = 4, .latency_us = 2000, .bandwidth_bytes_per_us = 100.0, .seed = 1});
  std::vector<SharedState> states = {reference_state(), reference_state(), reference_state(), SharedState()};
  std::vector<SharedState*> ptrs = {&states[0], &states[1], &states[2], &states[3]};
  const std::vector<PeerId> view = ids(4);
  const ElectedHashes elected = elect_from(ptrs, view);
  const Hash128 source_hash = states[0].state_hash();

  const SimStateSyncResult res = run_state_sync_sim(net, view, ptrs, elected, small_chunks(1));
  for (size_t r = 0; r < 4; ++r) ASSERT_TRUE(res.status[r].is_ok()) << r << ": " << res.status[r].to_string();
  EXPECT_EQ(states[3].state_hash(), source_hash);
  EXPECT_EQ(states[3].revision(), 7u);
  EXPECT_EQ(res.stats[3].bytes_downloaded, reference_state().total_bytes());
  EXPECT_EQ(res.stats[3].buffers_downloaded, 4u);
  EXPECT_GT(res.stats[3].download_gbit_per_s(), 0.0);
  // Striped: each of the three sources served part of it, and together exactly all of it.
  uint64_t served = 0;
  for (size_t r = 0; r < 3; ++r) {
    EXPECT_GT(res.stats[r].bytes_served, 0u) << r;
    EXPECT_EQ(res.stats[r].bytes_downloaded, 0u);
    served += res.stats[r].bytes_served;
  }
  EXPECT_EQ(served, res.stats[3].bytes_downloaded);
}

TEST(StateSync, StalePeerDownloadsOnlyTheDifferingBuffers) {
  SimNetwork net(SimNetworkConfig{.peers = 3, .latency_us = 500, .seed = 2});
  std::vector<SharedState> states = {reference_state(), reference_state(), reference_state()};
  // Peer 1 is stale: an old revision, one buffer with other contents, one it should not have.
  states[1].set_revision(6);
  states[1].data("outer.momentum")[12345] ^= std::byte{1};
  states[1].put("leftover", BufferDtype::kU8, random_bytes(10, 9));
  std::vector<SharedState*> ptrs = {&states[0], &states[1], &states[2]};
  const ElectedHashes elected = elect_from(ptrs, ids(3));
  ASSERT_EQ(elected.missing_on(1).size(), 1u);

  const SimStateSyncResult res = run_state_sync_sim(net, ids(3), ptrs, elected, small_chunks(1));
  for (size_t r = 0; r < 3; ++r) ASSERT_TRUE(res.status[r].is_ok()) << r << ": " << res.status[r].to_string();
  EXPECT_EQ(res.stats[1].bytes_downloaded, 100'003u);  // only outer.momentum
  EXPECT_EQ(res.stats[1].buffers_downloaded, 1u);
  EXPECT_EQ(res.stats[0].bytes_served + res.stats[2].bytes_served, 100'003u);
  EXPECT_EQ(states[1].state_hash(), states[0].state_hash());  // leftover dropped, revision set
  EXPECT_EQ(states[1].find("leftover"), nullptr);
  // Requests and chunk headers are all the overhead: 40 bytes per chunk each way.
  const uint64_t chunks = (100'003 + (16 << 10) - 1) / (16 << 10);
  EXPECT_EQ(res.stats[1].bytes_recv_total, 100'003u + chunks * kStateSyncHeaderBytes);
  EXPECT_EQ(res.stats[1].bytes_sent_total, chunks * kStateSyncHeaderBytes);
}

TEST(StateSync, PeersThatKeepTheirOwnServeButDownloadNothing) {
  // Three members each hold their own version of a per-peer state (no majority: the tie rule
  // elects peer 0's); they keep theirs, and only the fresh peer 3 downloads the elected one.
  SimNetwork net(SimNetworkConfig{.peers = 4, .latency_us = 500, .seed = 4});
  std::vector<SharedState> states = {reference_state(), reference_state(), reference_state(), SharedState()};
  for (size_t r = 0; r < 3; ++r) {
    states[r].data("outer.momentum")[r] ^= std::byte{1};
    states[r].set_revision(10);  // the same progress: else the newest would win (progress first)
    states[r].set_pulls(false);
  }
  states[1].put("only.on.1", BufferDtype::kU8, random_bytes(10, 5));
  const std::vector<Hash128> own = {states[0].state_hash(), states[1].state_hash(), states[2].state_hash()};
  std::vector<SharedState*> ptrs = {&states[0], &states[1], &states[2], &states[3]};
  const ElectedHashes elected = elect_from(ptrs, ids(4));
  EXPECT_EQ(elected.keep_own, (std::vector<PeerId>{0, 1, 2}));
  EXPECT_TRUE(elected.missing_on(1).empty());
  EXPECT_EQ(elected.missing_on(3).size(), 4u);
  const SyncPlan plan = plan_sync(ids(4), elected, 16 << 10);
  for (size_t r = 0; r < 3; ++r) EXPECT_TRUE(plan.downloads[r].empty()) << r;

  const SimStateSyncResult res = run_state_sync_sim(net, ids(4), ptrs, elected, small_chunks(1));
  for (size_t r = 0; r < 4; ++r) ASSERT_TRUE(res.status[r].is_ok()) << r << ": " << res.status[r].to_string();
  for (size_t r = 0; r < 3; ++r) {
    EXPECT_EQ(states[r].state_hash(), own[r]) << r;  // untouched, revision and extra buffer too
    EXPECT_EQ(res.stats[r].bytes_downloaded, 0u) << r;
  }
  EXPECT_EQ(states[3].state_hash(), own[0]);  // the elected (peer 0's) version
  EXPECT_EQ(res.stats[3].bytes_downloaded, reference_state().total_bytes());
  EXPECT_EQ(res.stats[0].bytes_served + res.stats[1].bytes_served + res.stats[2].bytes_served,
            reference_state().total_bytes());
  EXPECT_GE(res.stats[0].bytes_served, 100'003u);  // the only holder of the elected momentum
}

TEST(StateSync, UpToDateViewTransfersNothing) {
  SimNetwork net(SimNetworkConfig{.peers = 3, .seed = 3});
  std::vector<SharedState> states = {reference_state(), reference_state(), reference_state()};
  std::vector<SharedState*> ptrs = {&states[0], &states[1], &states[2]};
  const SimStateSyncResult res = run_state_sync_sim(net, ids(3), ptrs, elect_from(ptrs, ids(3)), small_chunks(1));
  for (size_t r = 0; r < 3; ++r) {
    EXPECT_TRUE(res.status[r].is_ok());
    EXPECT_EQ(res.stats[r].bytes_sent_total + res.stats[r].bytes_recv_total, 0u);
  }
  EXPECT_EQ(net.messages_delivered(), 0u);
}

TEST(StateSync, CorruptionOnTheWireIsDetectedAndTheRetrySucceeds) {
  SimNetwork net(SimNetworkConfig{.peers = 3, .latency_us = 1000, .seed = 4});
  std::vector<SharedState> states = {reference_state(), reference_state(), SharedState()};
  std::vector<SharedState*> ptrs = {&states[0], &states[1], &states[2]};
  const ElectedHashes elected = elect_from(ptrs, ids(3));
  const Hash128 before = states[2].state_hash();

  CorruptingTransport corrupt(net.endpoint(2), /*corrupt_chunk=*/5);
  std::vector<Transport*> transports = {&net.endpoint(0), &net.endpoint(1), &corrupt};
  SimStateSyncResult res = run_state_sync_sim(net, ids(3), ptrs, elected, small_chunks(1), {}, transports);
  EXPECT_EQ(corrupt.corrupted(), 1);
  EXPECT_EQ(res.status[2].code(), SyncCode::kHashMismatch) << res.status[2].to_string();
  EXPECT_NE(res.status[2].detail().find("expected"), std::string::npos);
  EXPECT_EQ(states[2].state_hash(), before);  // nothing committed
  EXPECT_EQ(states[2].buffers().size(), 0u);

  // The next sync (new id, clean network) succeeds.
  res = run_state_sync_sim(net, ids(3), ptrs, elected, small_chunks(2));
  for (size_t r = 0; r < 3; ++r) ASSERT_TRUE(res.status[r].is_ok()) << r << ": " << res.status[r].to_string();
  EXPECT_EQ(states[2].state_hash(), states[0].state_hash());
}

TEST(StateSync, SourceCrashMidTransferFailsCleanlyThenRetryUnderTheNewViewSucceeds) {
  SimNetwork net(SimNetworkConfig{.peers = 4, .latency_us = 1000, .bandwidth_bytes_per_us = 50.0, .seed = 5});
  std::vector<SharedState> states = {reference_state(), reference_state(), reference_state(), SharedState()};
  states[3].put("outer.weights", BufferDtype::kBf16, random_bytes(250'000, 77));  // stale, not empty
  states[3].set_revision(1);
  std::vector<SharedState*> ptrs = {&states[0], &states[1], &states[2], &states[3]};
  const ElectedHashes elected = elect_from(ptrs, ids(4));
  const Hash128 before = states[3].state_hash();

  // Peer 1 dies after a few chunks went through; the others learn of it 20 ms later.
  const SimFault crash{.kind = SimFault::Kind::kCrash, .peer = 1, .after_messages_delivered = 30,
                       .detect_after_us = 20'000};
  SimStateSyncResult res = run_state_sync_sim(net, ids(4), ptrs, elected, small_chunks(1), {crash});
  EXPECT_EQ(res.status[3].code(), SyncCode::kPeerLost) << res.status[3].to_string();
  EXPECT_EQ(res.status[3].peer(), 1u);
  EXPECT_GT(res.stats[3].bytes_downloaded, 0u);  // it really was mid-transfer
  EXPECT_LT(res.stats[3].bytes_downloaded, elected.bytes_missing_on(3));
  EXPECT_EQ(states[3].state_hash(), before);  // untouched

  // The new view without peer 1: re-elect from the survivors' reports and sync again.
  const std::vector<PeerId> view = {0, 2, 3};
  std::vector<SharedState*> survivors = {&states[0], &states[2], &states[3]};
  const ElectedHashes again = elect_from(survivors, view);
  res = run_state_sync_sim(net, view, survivors, again, small_chunks(2));
  for (size_t r = 0; r < 3; ++r) ASSERT_TRUE(res.status[r].is_ok()) << r << ": " << res.status[r].to_string();
  EXPECT_EQ(states[3].state_hash(), states[0].state_hash());
}

TEST(StateSync, FrozenSourceEndsInATimeoutWithTheStateUntouched) {
  SimNetwork net(SimNetworkConfig{.peers = 2, .latency_us = 1000, .bandwidth_bytes_per_us = 50.0, .seed = 6});
  std::vector<SharedState> states = {reference_state(), SharedState()};
  std::vector<SharedState*> ptrs = {&states[0], &states[1]};
  const ElectedHashes elected = elect_from(ptrs, ids(2));
  StateSyncOptions options = small_chunks(1);
  options.timeout_ms = 500;
  const SimFault freeze{.kind = SimFault::Kind::kFreeze, .peer = 0, .after_messages_delivered = 6};
  const SimStateSyncResult res = run_state_sync_sim(net, ids(2), ptrs, elected, options, {freeze});
  EXPECT_EQ(res.status[1].code(), SyncCode::kTimeout) << res.status[1].to_string();
  EXPECT_LE(res.stats[1].elapsed_us, options.timeout_ms * 1000);
  EXPECT_EQ(states[1].buffers().size(), 0u);
}

TEST(StateSync, ElectedBufferWithoutAHolderInTheViewFailsAtOnce) {
  SimNetwork net(SimNetworkConfig{.peers = 3, .seed = 7});
  std::vector<SharedState> states = {reference_state(), SharedState(), SharedState()};
  std::vector<SharedState*> all = {&states[0], &states[1], &states[2]};
  const ElectedHashes elected = elect_from(all, ids(3));
  const std::vector<PeerId> view = {1, 2};  // the only holder left the view
  std::vector<SharedState*> ptrs = {&states[1], &states[2]};
  const SimStateSyncResult res = run_state_sync_sim(net, view, ptrs, elected, small_chunks(1));
  for (size_t r = 0; r < 2; ++r) EXPECT_EQ(res.status[r].code(), SyncCode::kNoSource) << r;
}

TEST(StateSync, ChunkLargerThanTheTransportAllowsIsATypedError) {
  SimNetwork net(SimNetworkConfig{.peers = 2, .max_message_bytes = 4096, .seed = 8});
  std::vector<SharedState> states = {reference_state(), SharedState()};
  std::vector<SharedState*> ptrs = {&states[0], &states[1]};
  const SimStateSyncResult res = run_state_sync_sim(net, ids(2), ptrs, elect_from(ptrs, ids(2)), small_chunks(1));
  EXPECT_EQ(res.status[1].code(), SyncCode::kMessageTooLarge);
  EXPECT_EQ(states[1].buffers().size(), 0u);
}

}  // namespace
}  // namespace meridian::net
