// Ring order from measured bandwidths: the cyclic order of the members whose slowest link is
// as fast as possible (the bottleneck travelling-salesman problem), and a cache of pairwise
// measurements keyed by stable node ids so a membership change re-measures only new pairs.
//
// The ring is directed: member order[i] sends to order[i+1] (and the last to the first), so
// the cost of a ring is min over i of bandwidth[order[i]][order[i+1]], and an asymmetric link
// counts in the direction the ring uses it.
//   Exact (N <= kExactRingMaxNodes): dynamic programming over subsets, Held-Karp with max-min
//   instead of min-sum: best[S][j] = the best bottleneck of a path that starts at member 0,
//   visits exactly S and ends at j; best[S + k][k] = max_j min(best[S][j], bw[j][k]); the
//   ring closes with bw[j][0]. O(2^N N^2) time, O(2^N N) memory: 12 members ~ 0.6M steps.
//   Heuristic (larger N): greedy "fastest unvisited next member" from every start, then local
//   search over node moves, swaps and segment reversals that raise the bottleneck (or, at the
//   same bottleneck, reduce the number of links at the bottleneck, then raise the sum), at
//   most kHeuristicMaxPasses passes. Its result is compared with the upper bound
//   min over members of (fastest outgoing link, fastest incoming link), which every ring obeys.
//
// Deliberately not here: measuring (probe.h does it over the transport) and applying the order
// (the all-reduce takes the members in the order it is given).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <utility>
#include <vector>

namespace meridian::net {

// bits_per_s[i][j]: measured throughput from member i to member j; the diagonal is ignored;
// 0 means unknown or unusable.
using BandwidthMatrix = std::vector<std::vector<double>>;

inline constexpr size_t kExactRingMaxNodes = 12;
inline constexpr int kHeuristicMaxPasses = 200;

struct RingOrder {
  std::vector<size_t> order;      // a permutation of 0..N-1 starting with 0
  double bottleneck_bits_per_s = 0;  // the slowest link of the ring (0 for N < 2)
  double upper_bound_bits_per_s = 0; // no ring can do better than this
  bool exact = false;             // true when the optimum was proven (DP)
};

// The slowest link of a directed ring in this order.
double ring_bottleneck(const BandwidthMatrix& bw, const std::vector<size_t>& order);
// Best ring: exact for N <= kExactRingMaxNodes, heuristic above (or when force_heuristic).
RingOrder best_ring(const BandwidthMatrix& bw, bool force_heuristic = false);
// By enumerating every permutation: the reference for tests (N <= 9).
RingOrder brute_force_ring(const BandwidthMatrix& bw);

// Pairwise measurements by stable node id (the coordinator's peer id, which survives views;
// the transport's PeerId does not). Only pairs never measured need a probe.
class BandwidthCache {
 public:
  void record(uint64_t from_node, uint64_t to_node, double bits_per_s);
  std::optional<double> get(uint64_t from_node, uint64_t to_node) const;
  // Drops every measurement involving the node (it left; if it comes back, on another path,
  // it is measured again).
  void forget(uint64_t node);
  // Index pairs (i < j) of `nodes` with either direction unmeasured: what a probe must cover.
  std::vector<std::pair<size_t, size_t>> missing_pairs(const std::vector<uint64_t>& nodes) const;
  // The matrix for this view, in its order; unmeasured entries are 0.
  BandwidthMatrix matrix(const std::vector<uint64_t>& nodes) const;
  size_t size() const { return bits_per_s_.size(); }

 private:
  std::map<std::pair<uint64_t, uint64_t>, double> bits_per_s_;
};

}  // namespace meridian::net
