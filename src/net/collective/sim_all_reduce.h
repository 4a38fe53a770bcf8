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
#include "net/transport/sim_transport.h"

namespace meridian::net {

struct SimFault {
  enum class Kind { kCrash, kFreeze };
  Kind kind = Kind::kCrash;
  PeerId peer = 0;
  // The fault fires at the first moment both conditions hold.
  int64_t at_us = 0;
  uint64_t after_messages_delivered = 0;
  int64_t detect_after_us = 0;  // crash: delay before the others get kPeerLost
};

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
