// meridian-coordinator: the coordinator alone, without libtorch, for tests and for nodes that
// only coordinate. Same behaviour as `meridian coordinator`.
//   meridian-coordinator --listen HOST:PORT --token-file F [--heartbeat-timeout-ms 5000]
//                        [--heartbeat-interval-ms T/4] [--log FILE] [--holder-wait-ms 60000]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "meridian/coordinator_cmd.h"

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0", token_file, log_path;
  int timeout_ms = 5000, interval_ms = 0, holder_wait_ms = 60000;
  std::vector<std::string> problems;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help") {
      std::printf("usage: meridian-coordinator --listen HOST:PORT --token-file FILE [--heartbeat-timeout-ms MS] "
                  "[--heartbeat-interval-ms MS] [--log FILE] [--holder-wait-ms MS]\n"
                  "  --log FILE  append the run log to FILE: one JSON object per line for every join, leave,\n"
                  "              eviction and round\n"
                  "  --holder-wait-ms MS  how long syncs wait for a holder of the run's newest state to come\n"
                  "              back before the run goes on from an older state (default 60000)\n");
      return 0;
    }
    if (i + 1 >= argc) {
      problems.push_back("option " + arg + " needs a value");
      continue;
    }
    const std::string value = argv[++i];
    if (arg == "--listen") {
      listen = value;
    } else if (arg == "--token-file") {
      token_file = value;
    } else if (arg == "--heartbeat-timeout-ms") {
      timeout_ms = std::atoi(value.c_str());
    } else if (arg == "--heartbeat-interval-ms") {
      interval_ms = std::atoi(value.c_str());
    } else if (arg == "--holder-wait-ms") {
      holder_wait_ms = std::atoi(value.c_str());
    } else if (arg == "--log") {
      log_path = value;
    } else {
      problems.push_back("unknown option " + arg);
    }
  }
  if (token_file.empty()) problems.push_back("--token-file is required");
  if (!problems.empty()) {
    for (const std::string& p : problems) std::fprintf(stderr, "error: %s\n", p.c_str());
    std::fprintf(stderr, "hint: meridian-coordinator --help\n");
    return 2;
  }
  return meridian::run_coordinator_command(listen, token_file, timeout_ms, interval_ms, log_path, holder_wait_ms);
}
