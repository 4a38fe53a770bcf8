// `meridian train --nproc-per-node G`: this process becomes the launcher of the node's G local
// ranks (as torchrun does), each one a copy of this command with its rank in the environment:
//   MERIDIAN_LOCAL_RANK, MERIDIAN_LOCAL_WORLD_SIZE, MERIDIAN_LOCAL_RENDEZVOUS (a file in the run
//   directory through which the ranks find each other, train::LocalGroup).
// Rank 0 writes to this process's stdout and stderr, rank r > 0 to RUN_DIR/rank_<r>.log.
// SIGINT and SIGTERM are passed on to every rank (they stop together at a step, with a
// checkpoint). When a rank exits with an error or a signal, the launcher names it, stops the
// others (SIGTERM, then SIGKILL after a grace period) and exits with status 1. Torch-free.
#pragma once

#include <string>

namespace meridian {

struct LocalRank {
  int rank = 0;
  int world = 1;
  std::string rendezvous;  // empty when not started by a launcher
};

// The rank this process was started as (from the environment), or {0, 1, ""}.
LocalRank local_rank_from_env();

// Starts `world` copies of /proc/self/exe with `argv` and waits for them; returns the exit code.
int launch_local_ranks(int world, const std::string& run_dir, char** argv);

}  // namespace meridian
