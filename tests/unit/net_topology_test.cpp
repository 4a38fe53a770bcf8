// Topology: the bottleneck ring on hand-made bandwidth matrices whose optimum is known, the
// exact search against brute force on random matrices (N <= 7), the heuristic against the
// exact optimum and the upper bound, the measurement cache asking only for new pairs, and the
// probe on the simulated network measuring the configured link rate and only the pairs asked.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <vector>

#include "core/hash.h"
#include "net/topology/probe.h"
#include "net/topology/ring_order.h"
#include "net/transport/sim_transport.h"

namespace meridian::net {
namespace {

BandwidthMatrix uniform(size_t n, double v) {
  BandwidthMatrix m(n, std::vector<double>(n, v));
  for (size_t i = 0; i < n; ++i) m[i][i] = 0;
  return m;
}

BandwidthMatrix random_matrix(size_t n, uint64_t seed, bool symmetric) {
  SplitMix64 rng(seed);
  BandwidthMatrix m(n, std::vector<double>(n, 0.0));
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      if (i == j) continue;
      if (symmetric && j < i) {
        m[i][j] = m[j][i];
      } else {
        m[i][j] = static_cast<double>(1 + rng.below(1000));  // many distinct values, some ties
      }
    }
  }
  return m;
}

bool is_permutation_from_zero(const std::vector<size_t>& order, size_t n) {
  std::vector<size_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    if (sorted[i] != i) return false;
  }
  return order.size() == n && (n == 0 || order[0] == 0);
}

TEST(TopologyRing, TwoSitesJoinedByOneFastAndOneSlowLink) {
  // Sites {0, 2, 4} and {1, 3, 5}: 10 Gbit/s inside a site, 1 Gbit/s between, except 0-1 and
  // 4-5 at 5 Gbit/s. A ring must cross between the sites twice; the best crosses at 0-1 and
  // 4-5 (bottleneck 5 Gbit/s); the naive order 0,1,2,3,4,5 crosses six times at 1 Gbit/s.
  BandwidthMatrix m(6, std::vector<double>(6, 1e9));
  for (size_t i = 0; i < 6; ++i) {
    for (size_t j = 0; j < 6; ++j) {
      if (i == j) m[i][j] = 0;
      else if (i % 2 == j % 2) m[i][j] = 10e9;
    }
  }
  m[0][1] = m[1][0] = m[4][5] = m[5][4] = 5e9;
  EXPECT_EQ(ring_bottleneck(m, {0, 1, 2, 3, 4, 5}), 1e9);
  const RingOrder ring = best_ring(m);
  EXPECT_TRUE(ring.exact);
  EXPECT_EQ(ring.bottleneck_bits_per_s, 5e9);
  EXPECT_TRUE(is_permutation_from_zero(ring.order, 6));
  EXPECT_EQ(ring_bottleneck(m, ring.order), 5e9);
}

TEST(TopologyRing, AsymmetricLinkIsUsedInItsFastDirection) {
  // A 3-ring has two orientations; 0->1->2->0 uses the slow direction of 1->2.
  BandwidthMatrix m = uniform(3, 100);
  m[1][2] = 1;
  const RingOrder ring = best_ring(m);
  EXPECT_EQ(ring.order, (std::vector<size_t>{0, 2, 1}));
  EXPECT_EQ(ring.bottleneck_bits_per_s, 100);
}

TEST(TopologyRing, OneSlowMemberBoundsEveryRing) {
  // Member 3 has a 10 Mbit/s uplink to everybody: no order can avoid it.
  BandwidthMatrix m = uniform(5, 1e9);
  for (size_t j = 0; j < 5; ++j) {
    if (j != 3) m[3][j] = 1e7;
  }
  const RingOrder ring = best_ring(m);
  EXPECT_EQ(ring.bottleneck_bits_per_s, 1e7);
  EXPECT_EQ(ring.upper_bound_bits_per_s, 1e7);
  EXPECT_TRUE(ring.exact);
}

TEST(TopologyRing, TinyViews) {
  EXPECT_TRUE(best_ring({}).order.empty());
  EXPECT_EQ(best_ring(uniform(1, 0)).order, (std::vector<size_t>{0}));
  BandwidthMatrix two = {{0, 5}, {3, 0}};
  const RingOrder ring = best_ring(two);
  EXPECT_EQ(ring.order, (std::vector<size_t>{0, 1}));
  EXPECT_EQ(ring.bottleneck_bits_per_s, 3);
}

TEST(TopologyRing, ExactMatchesBruteForceOnRandomMatrices) {
  for (size_t n = 3; n <= 7; ++n) {
    for (uint64_t seed = 1; seed <= 60; ++seed) {
      const BandwidthMatrix m = random_matrix(n, seed * 100 + n, seed % 2 == 0);
      const RingOrder exact = best_ring(m);
      const RingOrder brute = brute_force_ring(m);
      ASSERT_TRUE(is_permutation_from_zero(exact.order, n));
      EXPECT_EQ(exact.bottleneck_bits_per_s, brute.bottleneck_bits_per_s) << "n=" << n << " seed=" << seed;
      EXPECT_EQ(ring_bottleneck(m, exact.order), exact.bottleneck_bits_per_s);
      EXPECT_LE(exact.bottleneck_bits_per_s, exact.upper_bound_bits_per_s);
    }
  }
}

TEST(TopologyRing, HeuristicIsCloseToTheOptimumAndFindsAPlantedRing) {
  // Against the exact optimum on N = 8..11: never better (it cannot be), and on most
  // matrices equal.
  int equal = 0, total = 0;
  for (size_t n = 8; n <= 11; ++n) {
    for (uint64_t seed = 1; seed <= 10; ++seed) {
      const BandwidthMatrix m = random_matrix(n, seed * 7919 + n, seed % 2 == 1);
      const RingOrder exact = best_ring(m);
      const RingOrder heur = best_ring(m, /*force_heuristic=*/true);
      ASSERT_TRUE(is_permutation_from_zero(heur.order, n));
      EXPECT_LE(heur.bottleneck_bits_per_s, exact.bottleneck_bits_per_s);
      EXPECT_EQ(ring_bottleneck(m, heur.order), heur.bottleneck_bits_per_s);
      EXPECT_GE(heur.bottleneck_bits_per_s, 0.5 * exact.bottleneck_bits_per_s) << "n=" << n << " seed=" << seed;
      equal += heur.bottleneck_bits_per_s == exact.bottleneck_bits_per_s;
      ++total;
    }
  }
  EXPECT_GE(equal * 10, total * 7) << equal << " of " << total << " optimal";

  // N = 40, beyond the exact search: a hidden ring of fast links (>= 500) among slow ones
  // (< 400) must be found.
  const size_t n = 40;
  SplitMix64 rng(42);
  BandwidthMatrix m(n, std::vector<double>(n, 0));
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      if (i != j) m[i][j] = static_cast<double>(1 + rng.below(399));
    }
  }
  std::vector<size_t> hidden(n);
  for (size_t i = 0; i < n; ++i) hidden[i] = i;
  for (size_t i = n - 1; i > 1; --i) std::swap(hidden[i], hidden[1 + rng.below(i)]);
  for (size_t i = 0; i < n; ++i) m[hidden[i]][hidden[(i + 1) % n]] = static_cast<double>(500 + rng.below(500));
  const RingOrder ring = best_ring(m);
  EXPECT_FALSE(ring.exact && ring.bottleneck_bits_per_s < ring.upper_bound_bits_per_s);
  EXPECT_TRUE(is_permutation_from_zero(ring.order, n));
  EXPECT_GE(ring.bottleneck_bits_per_s, 500);
}

TEST(TopologyCache, MembershipChangeAsksOnlyForNewPairs) {
  BandwidthCache cache;
  const std::vector<uint64_t> before = {11, 22, 33};
  EXPECT_EQ(cache.missing_pairs(before).size(), 3u);
  for (uint64_t a : before) {
    for (uint64_t b : before) {
      if (a != b) cache.record(a, b, 1e9 + static_cast<double>(a * 100 + b));
    }
  }
  EXPECT_TRUE(cache.missing_pairs(before).empty());
  // Node 44 joins at position 1 of the new view: only its three pairs are new.
  const std::vector<uint64_t> after = {11, 44, 22, 33};
  const auto missing = cache.missing_pairs(after);
  EXPECT_EQ(missing, (std::vector<std::pair<size_t, size_t>>{{0, 1}, {1, 2}, {1, 3}}));
  const BandwidthMatrix m = cache.matrix(after);
  EXPECT_EQ(m[0][2], 1e9 + 1122);
  EXPECT_EQ(m[3][2], 1e9 + 3322);
  EXPECT_EQ(m[1][0], 0.0);  // unmeasured
  // A node that leaves is forgotten; the remaining pairs stay measured.
  cache.forget(22);
  EXPECT_EQ(cache.missing_pairs({11, 33}).size(), 0u);
  EXPECT_EQ(cache.size(), 2u);
}

TEST(TopologyProbe, ScheduleUsesDisjointPairsPerRound) {
  std::vector<std::pair<size_t, size_t>> all;
  for (size_t i = 0; i < 6; ++i) {
    for (size_t j = i + 1; j < 6; ++j) all.emplace_back(i, j);
  }
  const auto rounds = schedule_rounds(all);
  size_t pairs = 0;
  for (const auto& round : rounds) {
    std::set<size_t> used;
    for (const auto& [a, b] : round) {
      EXPECT_TRUE(used.insert(a).second);
      EXPECT_TRUE(used.insert(b).second);
    }
    pairs += round.size();
  }
  EXPECT_EQ(pairs, 15u);
  EXPECT_LE(rounds.size(), 7u);  // greedy; the optimum is 5
}

TEST(TopologyProbe, MeasuresTheSimulatedLinkRateInBothDirections) {
  // 12.5 bytes/us = 100 Mbit/s per directed link, 5 ms one way.
  SimNetwork net(SimNetworkConfig{.peers = 4, .latency_us = 5000, .bandwidth_bytes_per_us = 12.5, .seed = 1});
  const std::vector<PeerId> view = {0, 1, 2, 3};
  std::vector<std::pair<size_t, size_t>> pairs;
  for (size_t i = 0; i < 4; ++i) {
    for (size_t j = i + 1; j < 4; ++j) pairs.emplace_back(i, j);
  }
  const ProbeOptions options{.probe_bytes = 2 << 20, .chunk_bytes = 64 << 10, .window = 8, .max_direction_ms = 10'000,
                             .timeout_ms = 60'000, .probe_id = 1};
  const SimProbeResult res = run_probe_sim(net, view, pairs, options);
  for (size_t r = 0; r < 4; ++r) {
    ASSERT_TRUE(res.status[r].is_ok()) << r << ": " << res.status[r].to_string();
    ASSERT_EQ(res.measurements[r].size(), 12u);  // every directed link, on every member
    EXPECT_EQ(res.measurements[r][5].bits_per_s, res.measurements[0][5].bits_per_s);  // same list everywhere
  }
  for (const LinkMeasurement& m : res.measurements[0]) {
    EXPECT_NEAR(m.bits_per_s, 100e6, 5e6) << m.from << "->" << m.to;
    EXPECT_EQ(m.bytes, 2u << 20);
  }
}

TEST(TopologyProbe, StopsAtItsTimeLimitAndMeasuresOnlyTheGivenPairs) {
  SimNetwork net(SimNetworkConfig{.peers = 4, .latency_us = 1000, .bandwidth_bytes_per_us = 12.5, .seed = 2});
  const std::vector<PeerId> view = {0, 1, 2, 3};
  // Only the joiner's pairs (member 3 is new).
  const std::vector<std::pair<size_t, size_t>> pairs = {{0, 3}, {1, 3}, {2, 3}};
  const ProbeOptions options{.probe_bytes = 1u << 30, .chunk_bytes = 64 << 10, .window = 8, .max_direction_ms = 200,
                             .timeout_ms = 60'000, .probe_id = 2};
  const SimProbeResult res = run_probe_sim(net, view, pairs, options);
  for (size_t r = 0; r < 4; ++r) ASSERT_TRUE(res.status[r].is_ok()) << res.status[r].to_string();
  ASSERT_EQ(res.measurements[0].size(), 6u);
  for (const LinkMeasurement& m : res.measurements[0]) {
    EXPECT_TRUE(m.from == 3 || m.to == 3);
    EXPECT_NEAR(m.bits_per_s, 100e6, 5e6);
    // Stopped by time: about 200 ms of a 100 Mbit/s link (2.5 MB), far below the 1 GiB cap.
    EXPECT_LT(m.bytes, 4u << 20);
    EXPECT_LT(m.elapsed_us, 400'000);
  }
  // Members 0..2 sent only to 3 (probe traffic) and results to everybody.
  EXPECT_LT(res.bytes_sent[0], 4u << 20);
}

TEST(TopologyProbe, LostMemberFailsTheProbe) {
  SimNetwork net(SimNetworkConfig{.peers = 3, .latency_us = 1000, .bandwidth_bytes_per_us = 12.5, .seed = 3});
  net.crash(2, 1000);
  const std::vector<PeerId> view = {0, 1};
  // Member 2 is not in the view: its loss is ignored, the probe of 0-1 completes.
  const SimProbeResult res = run_probe_sim(net, view, {{0, 1}},
                                           ProbeOptions{.probe_bytes = 1 << 20, .chunk_bytes = 64 << 10, .probe_id = 3});
  EXPECT_TRUE(res.status[0].is_ok());
  SimNetwork net2(SimNetworkConfig{.peers = 3, .latency_us = 1000, .bandwidth_bytes_per_us = 12.5, .seed = 4});
  net2.crash(2, 1000);
  BandwidthProbe probe(net2.endpoint(0), {0, 1, 2}, {{0, 2}}, ProbeOptions{.probe_id = 4});
  probe.start();
  Message m;
  for (int i = 0; i < 10 && !probe.done(); ++i) {
    const NetStatus st = net2.endpoint(0).recv(&m, net2.now_us() + 10'000);
    probe.on_recv(st, m);
  }
  ASSERT_TRUE(probe.done());
  EXPECT_EQ(probe.status().code(), NetCode::kPeerLost);
  EXPECT_EQ(probe.status().peer(), 2u);
}

}  // namespace
}  // namespace meridian::net
