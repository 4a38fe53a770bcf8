#include "meridian/coordinator_cmd.h"

#include <chrono>
#include <csignal>
#include <cstdio>

#include "coord/coordinator_server.h"
#include "net/membership/wire.h"

namespace meridian {

namespace {

// The one server a signal handler may stop: set while run_coordinator_command runs. A signal
// handler can reach nothing else.
coord::CoordinatorServer* g_running_server = nullptr;

extern "C" void on_stop_signal(int) {
  if (g_running_server != nullptr) g_running_server->stop();
}

int fail(const Status& st) {
  std::fprintf(stderr, "error: %s\n", st.to_string().c_str());
  return 1;
}

}  // namespace

int run_coordinator_command(const std::string& listen, const std::string& token_file, int heartbeat_timeout_ms,
                            int heartbeat_interval_ms, const std::string& log_path, int holder_wait_ms) {
  if (heartbeat_timeout_ms <= 0) {
    return fail(Status::error("--heartbeat-timeout-ms must be > 0 (got " + std::to_string(heartbeat_timeout_ms) + ")"));
  }
  if (holder_wait_ms < 0) {
    return fail(Status::error("--holder-wait-ms must be >= 0 (got " + std::to_string(holder_wait_ms) + ")"));
  }
  if (heartbeat_interval_ms <= 0) heartbeat_interval_ms = std::max(1, heartbeat_timeout_ms / 4);
  if (heartbeat_interval_ms >= heartbeat_timeout_ms) {
    return fail(Status::error("--heartbeat-interval-ms must be below --heartbeat-timeout-ms"));
  }
  Result<std::string> token = net::membership::read_token_file(token_file);
  if (!token) return fail(token.status());
  coord::CoordinatorServerOptions options;
  options.listen = listen;
  options.token = *token;
  options.log_path = log_path;
  options.config.heartbeat_timeout_us = int64_t{heartbeat_timeout_ms} * 1000;
  options.config.heartbeat_interval_us = int64_t{heartbeat_interval_ms} * 1000;
  options.config.holder_wait_us = int64_t{holder_wait_ms} * 1000;
  // Epochs of this incarnation start above any its predecessors on this address published.
  options.config.incarnation = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  Result<std::unique_ptr<coord::CoordinatorServer>> server = coord::CoordinatorServer::start(options);
  if (!server) return fail(server.status());
  g_running_server = server->get();
  struct sigaction sa{};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  std::printf("meridian coordinator listening on %s\n", (*server)->address().c_str());
  std::fflush(stdout);
  const Status st = (*server)->run();
  g_running_server = nullptr;
  return st.is_ok() ? 0 : fail(st);
}

}  // namespace meridian
