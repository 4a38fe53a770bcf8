// Runs one all-reduce on every member of a simulated network, in one thread, on simulated
// time: the harness for unit tests, the seeded simulation and benchmarks of the algorithm.
// Faults are scheduled by simulated time or by the number of messages delivered so far, so a
// run is a pure function of (inputs, network config and seed, faults).
//
// Deliberately not here: membership or retries (the caller runs a new operation with the new
// view), threads, real sockets.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "net/collective/all_reduce.h"
#include "net/transport/sim_driver.h"
#include "net/transport/sim_transport.h"

namespace meridian::net {

struct SimAllReduceResult {
  std::vector<NetStatus> status;      // per member (rank order); crashed/frozen members: kClosed
  std::vector<AllReduceStats> stats;  // per member
  int64_t finished_us = 0;            // simulated time when the last live member finished
  uint64_t foreign_frames = 0;        // frames of other operations that were dropped
};

// buffers[r] is the buffer of members[r]. Every live, unfrozen member ends done (ok or error):
// a member never waits past its deadline.
SimAllReduceResult run_all_reduce_sim(SimNetwork& network, const std::vector<PeerId>& members,
                                      const std::vector<std::span<float>>& buffers, const AllReduceOptions& options,
                                      const std::vector<SimFault>& faults = {});

}  // namespace meridian::net
