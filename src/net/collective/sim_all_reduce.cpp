#include "net/collective/sim_all_reduce.h"

#include <algorithm>
#include <memory>

#include "core/assert.h"

namespace meridian::net {

SimAllReduceResult run_all_reduce_sim(SimNetwork& network, const std::vector<PeerId>& members,
                                      const std::vector<std::span<float>>& buffers, const AllReduceOptions& options,
                                      const std::vector<SimFault>& faults) {
  const size_t world = members.size();
  MERIDIAN_ASSERT(buffers.size() == world, "{} buffers for {} members", buffers.size(), world);
  SimAllReduceResult result;
  result.status.assign(world, NetStatus::error(NetCode::kClosed, kNoPeer, "member did not run"));
  result.stats.assign(world, AllReduceStats{});

  std::vector<std::unique_ptr<AllReduce>> ops(world);
  std::vector<bool> stopped(world, false);  // crashed or frozen: no longer driven
  for (size_t r = 0; r < world; ++r) {
    if (!network.is_up(members[r])) {
      stopped[r] = true;
      continue;
    }
    ops[r] = std::make_unique<AllReduce>(network.endpoint(members[r]), members, buffers[r], options);
  }
  drive_sim_ops(
      network, members, ops, stopped, faults, [&](size_t r) -> SimTransport& { return network.endpoint(members[r]); },
      [&](size_t, AllReduce::Disposition d) {
        if (d == AllReduce::Disposition::kForeign) ++result.foreign_frames;
      });

  for (size_t r = 0; r < world; ++r) {
    if (!ops[r]) continue;
    result.stats[r] = ops[r]->stats();
    if (ops[r]->done()) {
      result.status[r] = ops[r]->status();
      result.finished_us = std::max(result.finished_us, ops[r]->stats().elapsed_us);
    }
  }
  return result;
}

}  // namespace meridian::net
