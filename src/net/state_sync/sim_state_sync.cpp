#include "net/state_sync/sim_state_sync.h"

#include <algorithm>
#include <memory>
#include <optional>

#include "core/assert.h"

namespace meridian::net {

SimStateSyncResult run_state_sync_sim(SimNetwork& network, const std::vector<PeerId>& view,
                                      const std::vector<SharedState*>& states, const ElectedHashes& elected,
                                      const StateSyncOptions& options, const std::vector<SimFault>& faults,
                                      const std::vector<Transport*>& transports) {
  const size_t world = view.size();
  MERIDIAN_ASSERT(states.size() == world, "{} states for {} members", states.size(), world);
  MERIDIAN_ASSERT(transports.empty() || transports.size() == world, "{} transports for {} members",
                  transports.size(), world);
  auto transport_of = [&](size_t r) -> Transport& {
    return transports.empty() ? network.endpoint(view[r]) : *transports[r];
  };
  SimStateSyncResult result;
  result.status.assign(world, SyncStatus::error(SyncCode::kClosed, kNoPeer, "member did not run"));
  result.stats.assign(world, SyncStats{});

  std::vector<std::unique_ptr<StateSync>> ops(world);
  std::vector<bool> stopped(world, false);  // crashed or frozen: no longer driven
  for (size_t r = 0; r < world; ++r) {
    if (!network.is_up(view[r])) {
      stopped[r] = true;
      continue;
    }
    ops[r] = std::make_unique<StateSync>(transport_of(r), view, *states[r], elected, options);
  }
  // A foreign frame here can only be another protocol's: dropped.
  drive_sim_ops(network, view, ops, stopped, faults, transport_of, [](size_t, auto) {});

  for (size_t r = 0; r < world; ++r) {
    if (!ops[r]) continue;
    result.stats[r] = ops[r]->stats();
    if (ops[r]->done() && !stopped[r]) {
      result.status[r] = ops[r]->status();
      result.finished_us = std::max(result.finished_us, ops[r]->stats().elapsed_us);
    }
  }
  return result;
}

}  // namespace meridian::net
