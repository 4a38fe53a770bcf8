// Bottleneck ring search and the measurement cache; the algorithms are described in
// ring_order.h.
#include "net/topology/ring_order.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <tuple>

#include "core/assert.h"

namespace meridian::net {

namespace {

void check_square(const BandwidthMatrix& bw) {
  for (const auto& row : bw) MERIDIAN_ASSERT(row.size() == bw.size(), "bandwidth matrix is not square");
}

double upper_bound(const BandwidthMatrix& bw) {
  const size_t n = bw.size();
  if (n < 2) return 0;
  double bound = std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < n; ++i) {
    double out = 0, in = 0;
    for (size_t j = 0; j < n; ++j) {
      if (j == i) continue;
      out = std::max(out, bw[i][j]);
      in = std::max(in, bw[j][i]);
    }
    bound = std::min({bound, out, in});
  }
  return bound;
}

// Objective of the local search: higher bottleneck, then fewer links at the bottleneck, then a
// higher sum (which moves the search off plateaus).
struct Score {
  double bottleneck = 0;
  size_t at_bottleneck = 0;
  double sum = 0;
  bool better_than(const Score& o) const {
    if (bottleneck != o.bottleneck) return bottleneck > o.bottleneck;
    if (at_bottleneck != o.at_bottleneck) return at_bottleneck < o.at_bottleneck;
    return sum > o.sum * (1 + 1e-12);
  }
};

Score score(const BandwidthMatrix& bw, const std::vector<size_t>& order) {
  Score s;
  s.bottleneck = ring_bottleneck(bw, order);
  for (size_t i = 0; i < order.size(); ++i) {
    const double w = bw[order[i]][order[(i + 1) % order.size()]];
    s.sum += w;
    s.at_bottleneck += w == s.bottleneck;
  }
  return s;
}

// Rotates the ring so that it starts with member 0 (the same ring).
void normalise(std::vector<size_t>& order) {
  auto it = std::find(order.begin(), order.end(), size_t{0});
  std::rotate(order.begin(), it, order.end());
}

RingOrder exact_ring(const BandwidthMatrix& bw) {
  const size_t n = bw.size();
  const size_t subsets = size_t{1} << n;
  constexpr double kNone = -1;
  // best[S * n + j]: S always contains member 0 and j.
  std::vector<double> best(subsets * n, kNone);
  std::vector<uint8_t> prev(subsets * n, 0);
  best[1 * n + 0] = std::numeric_limits<double>::infinity();
  for (size_t s = 1; s < subsets; s += 2) {  // odd: contains member 0
    for (size_t j = 0; j < n; ++j) {
      const double here = best[s * n + j];
      if (here == kNone) continue;
      for (size_t k = 1; k < n; ++k) {
        if (s & (size_t{1} << k)) continue;
        const size_t t = s | (size_t{1} << k);
        const double via = std::min(here, bw[j][k]);
        if (via > best[t * n + k]) {
          best[t * n + k] = via;
          prev[t * n + k] = static_cast<uint8_t>(j);
        }
      }
    }
  }
  const size_t full = subsets - 1;
  double top = kNone;
  size_t last = 0;
  for (size_t j = 1; j < n; ++j) {
    const double closed = std::min(best[full * n + j], bw[j][0]);
    if (closed > top) {
      top = closed;
      last = j;
    }
  }
  RingOrder ring;
  ring.exact = true;
  std::vector<size_t> reversed;
  size_t s = full, j = last;
  while (j != 0) {
    reversed.push_back(j);
    const size_t p = prev[s * n + j];
    s &= ~(size_t{1} << j);
    j = p;
  }
  reversed.push_back(0);
  ring.order.assign(reversed.rbegin(), reversed.rend());
  ring.bottleneck_bits_per_s = ring_bottleneck(bw, ring.order);
  return ring;
}

RingOrder heuristic_ring(const BandwidthMatrix& bw) {
  const size_t n = bw.size();
  std::vector<size_t> best_order;
  Score best_score{-1, 0, 0};
  // Greedy from every start.
  for (size_t start = 0; start < n; ++start) {
    std::vector<size_t> order = {start};
    std::vector<bool> used(n, false);
    used[start] = true;
    for (size_t step = 1; step < n; ++step) {
      const size_t at = order.back();
      size_t next = n;
      for (size_t k = 0; k < n; ++k) {
        if (!used[k] && (next == n || bw[at][k] > bw[at][next])) next = k;
      }
      used[next] = true;
      order.push_back(next);
    }
    const Score s = score(bw, order);
    if (s.better_than(best_score)) {
      best_score = s;
      best_order = order;
    }
  }
  // Local search: relocate one member, swap two, reverse a segment; first improvement wins.
  for (int pass = 0; pass < kHeuristicMaxPasses; ++pass) {
    bool improved = false;
    for (size_t i = 0; i < n && !improved; ++i) {
      for (size_t j = 0; j < n && !improved; ++j) {
        if (i == j) continue;
        for (int move = 0; move < 3 && !improved; ++move) {
          std::vector<size_t> cand = best_order;
          if (move == 0) {
            const size_t v = cand[i];
            cand.erase(cand.begin() + static_cast<std::ptrdiff_t>(i));
            cand.insert(cand.begin() + static_cast<std::ptrdiff_t>(j), v);
          } else if (move == 1) {
            if (j < i) continue;
            std::swap(cand[i], cand[j]);
          } else {
            if (j < i) continue;
            std::reverse(cand.begin() + static_cast<std::ptrdiff_t>(i), cand.begin() + static_cast<std::ptrdiff_t>(j) + 1);
          }
          const Score s = score(bw, cand);
          if (s.better_than(best_score)) {
            best_score = s;
            best_order = std::move(cand);
            improved = true;
          }
        }
      }
    }
    if (!improved) break;
  }
  normalise(best_order);
  RingOrder ring;
  ring.order = best_order;
  ring.bottleneck_bits_per_s = best_score.bottleneck;
  return ring;
}

}  // namespace

double ring_bottleneck(const BandwidthMatrix& bw, const std::vector<size_t>& order) {
  if (order.size() < 2) return 0;
  double slowest = std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < order.size(); ++i) {
    slowest = std::min(slowest, bw[order[i]][order[(i + 1) % order.size()]]);
  }
  return slowest;
}

RingOrder best_ring(const BandwidthMatrix& bw, bool force_heuristic) {
  check_square(bw);
  const size_t n = bw.size();
  RingOrder ring;
  if (n < 3) {
    for (size_t i = 0; i < n; ++i) ring.order.push_back(i);
    ring.bottleneck_bits_per_s = ring_bottleneck(bw, ring.order);
    ring.exact = true;
  } else if (n <= kExactRingMaxNodes && !force_heuristic) {
    ring = exact_ring(bw);
  } else {
    ring = heuristic_ring(bw);
  }
  ring.upper_bound_bits_per_s = upper_bound(bw);
  if (ring.bottleneck_bits_per_s >= ring.upper_bound_bits_per_s) ring.exact = true;  // the bound is met
  return ring;
}

RingOrder brute_force_ring(const BandwidthMatrix& bw) {
  check_square(bw);
  const size_t n = bw.size();
  MERIDIAN_ASSERT(n <= 9, "brute force over {} members is too slow", n);
  RingOrder ring;
  ring.exact = true;
  ring.upper_bound_bits_per_s = upper_bound(bw);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  ring.order = order;
  ring.bottleneck_bits_per_s = ring_bottleneck(bw, order);
  if (n < 3) return ring;
  do {  // member 0 stays first: rotations are the same ring
    const double b = ring_bottleneck(bw, order);
    if (b > ring.bottleneck_bits_per_s) {
      ring.bottleneck_bits_per_s = b;
      ring.order = order;
    }
  } while (std::next_permutation(order.begin() + 1, order.end()));
  return ring;
}

// ---- BandwidthCache ---------------------------------------------------------------------------

void BandwidthCache::record(uint64_t from_node, uint64_t to_node, double bits_per_s) {
  bits_per_s_[{from_node, to_node}] = bits_per_s;
}

std::optional<double> BandwidthCache::get(uint64_t from_node, uint64_t to_node) const {
  auto it = bits_per_s_.find({from_node, to_node});
  if (it == bits_per_s_.end()) return std::nullopt;
  return it->second;
}

void BandwidthCache::forget(uint64_t node) {
  for (auto it = bits_per_s_.begin(); it != bits_per_s_.end();) {
    it = it->first.first == node || it->first.second == node ? bits_per_s_.erase(it) : std::next(it);
  }
}

std::vector<std::pair<size_t, size_t>> BandwidthCache::missing_pairs(const std::vector<uint64_t>& nodes) const {
  std::vector<std::pair<size_t, size_t>> pairs;
  for (size_t i = 0; i < nodes.size(); ++i) {
    for (size_t j = i + 1; j < nodes.size(); ++j) {
      if (!get(nodes[i], nodes[j]) || !get(nodes[j], nodes[i])) pairs.emplace_back(i, j);
    }
  }
  return pairs;
}

BandwidthMatrix BandwidthCache::matrix(const std::vector<uint64_t>& nodes) const {
  BandwidthMatrix m(nodes.size(), std::vector<double>(nodes.size(), 0.0));
  for (size_t i = 0; i < nodes.size(); ++i) {
    for (size_t j = 0; j < nodes.size(); ++j) {
      if (i != j) m[i][j] = get(nodes[i], nodes[j]).value_or(0.0);
    }
  }
  return m;
}

}  // namespace meridian::net
