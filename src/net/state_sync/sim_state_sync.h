// Runs one shared-state sync on every member of a simulated network, in one thread, on
// simulated time: the harness for unit tests, the seeded simulation and benchmarks of the
// algorithm. Faults (SimFault, shared with the all-reduce harness) fire by simulated time or by
// messages delivered, so a run is a pure function of (states, network config and seed, faults).
//
// Deliberately not here: election (the caller runs elect() on the members' reports), retries
// (the caller syncs again under a new view), threads, sockets.
#pragma once

#include <cstdint>
#include <vector>

#include "net/collective/sim_all_reduce.h"
#include "net/state_sync/state_sync.h"
#include "net/transport/sim_transport.h"

namespace meridian::net {

struct SimStateSyncResult {
  std::vector<SyncStatus> status;  // per member (view order); crashed/frozen members: kClosed
  std::vector<SyncStats> stats;    // per member
  int64_t finished_us = 0;         // elapsed time of the slowest live member
};

// states[r] is the state of view[r]. transports, if not empty, replaces the members'
// endpoints (transports[r] must wrap network.endpoint(view[r]): tests interpose one to corrupt
// or count frames). Every live, unfrozen member ends done, no later than its deadline.
SimStateSyncResult run_state_sync_sim(SimNetwork& network, const std::vector<PeerId>& view,
                                      const std::vector<SharedState*>& states, const ElectedHashes& elected,
                                      const StateSyncOptions& options, const std::vector<SimFault>& faults = {},
                                      const std::vector<Transport*>& transports = {});

}  // namespace meridian::net
