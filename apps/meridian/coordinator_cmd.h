// `meridian coordinator`: runs the run's coordinator until SIGINT or SIGTERM. Shared by the
// main binary's subcommand and the torch-free `meridian-coordinator` executable.
#pragma once

#include <string>

namespace meridian {

// listen: "host:port" (port 0: the OS picks). Prints one line
//   meridian coordinator listening on HOST:PORT
// on stdout (flushed) once bound, logs to stderr, and returns the process exit code: 0 after a
// signal, 1 on an error (printed with its hint).
// heartbeat_interval_ms <= 0: a quarter of the timeout. log_path: the run log (--log), one JSON
// object per line appended for every join, leave, eviction and round; empty: none.
// holder_wait_ms: how long syncs wait for a holder of the run's newest state to come back before
// the run goes on from an older one (CoordinatorConfig::holder_wait_us).
int run_coordinator_command(const std::string& listen, const std::string& token_file, int heartbeat_timeout_ms,
                            int heartbeat_interval_ms = 0, const std::string& log_path = {}, int holder_wait_ms = 60000);

}  // namespace meridian
