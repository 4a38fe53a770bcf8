// Named fault points: the places where a test makes this process fail, each one line of code,
//   MERIDIAN_FAULT_POINT("checkpoint.rename");
// armed from one place, so library code carries no test-only options or hooks.
//
// Arming: fault::arm(spec) (apps/meridian/main.cpp and the test programs call
// fault::arm_from_env(), which reads MERIDIAN_FAULT). spec = "NAME[@N][:ACTION]" items separated
// by commas: the N-th time (1-based, default 1) this process reaches the point NAME, ACTION
// happens: kill (SIGKILL, the default: a crash at exactly that point), stop (SIGSTOP: frozen
// until someone sends SIGCONT), hang (blocks this thread forever). Before acting, the point
// prints "meridian: fault point NAME reached (ACTION)" on stdout, so a test can wait for it.
// A point that is never armed costs one relaxed atomic load.
//
// The points (grep MERIDIAN_FAULT_POINT for the list): checkpoint.* (every write, fsync and
// rename of a checkpoint save, io/checkpoint.cpp), diloco.all_reduce (a node enters a round's
// all-reduce, train/elastic.cpp), diloco.rank_ring (local rank r > 0 of a node enters its ring's
// part of the all-reduce, train/local_ranks.cpp), state_sync.transfer (a sync has its elected hashes) and
// state_sync.serve (the same, on a member that others download from), communicator.mesh (a peer
// builds the mesh of a new view; net/communicator.cpp).
//
// Deliberately not here: faults of the network (the simulated transport draws those) and
// probabilities (a fault point fires at a count, so a failure replays exactly).
#pragma once

#include <atomic>
#include <string_view>

#include "core/status.h"

namespace meridian::fault {

namespace detail {
extern std::atomic<bool> any_armed;
void reached(std::string_view name);
}  // namespace detail

// Arms the points of `spec` (adds to what is armed). A malformed spec is an error naming the
// item; nothing of it is armed then.
Status arm(std::string_view spec);
// arm(getenv("MERIDIAN_FAULT")) when it is set; ok otherwise.
Status arm_from_env();
// Disarms every point and resets the counts (tests of this facility).
void disarm_all();
// How often `name` was reached since it was armed (0 for a point that is not armed).
int64_t hits(std::string_view name);

}  // namespace meridian::fault

#define MERIDIAN_FAULT_POINT(name)                                                       \
  do {                                                                                   \
    if (::meridian::fault::detail::any_armed.load(std::memory_order_relaxed))            \
      ::meridian::fault::detail::reached(name);                                          \
  } while (0)
