// The coordinator daemon: a TCP listener and one poll() loop that authenticates connections
// (the handshake of net/membership/wire.h, non-blocking), splits frames, and feeds the pure
// CoordinatorState with messages, disconnects and ticks; it carries out the actions (send,
// close, log). It holds soft state only: everything lives in CoordinatorState and is rebuilt
// from re-registering peers after a restart.
//
// Failure containment: a connection that sends garbage, an oversized frame, an unknown
// message or a message out of order is closed, and nothing else is affected; a connection
// that does not finish its handshake within handshake_timeout is closed; a peer that does not
// read (its output queue passes max_output_bytes) is closed.
//
// Run log: with log_path set, every line the daemon logs is also appended to that file as one
// JSON object per line, {"t": unix seconds, "event": kind, "msg": text, ...the LogEvent's
// fields}, flushed line by line so that it can be tailed. Appending means a restarted
// coordinator continues the same log; its first line is "restarted" instead of "started"
// when the file was not empty, and it resumes the run's progress from it: the revision of the
// last "sync" event (CoordinatorConfig::known_revision), so that no restart lets the run go back
// to an older state while a holder of the newer one is away. A new run takes a new log file.
//
// Threads: run() owns everything on the calling thread. stop() may be called from any thread
// or a signal handler (it writes one byte to a pipe).
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include "coord/coordinator_state.h"
#include "core/status.h"

namespace meridian::coord {

struct CoordinatorServerOptions {
  std::string listen = "127.0.0.1:0";  // port 0: the OS picks; see address()
  std::string token;                   // the run token
  CoordinatorConfig config;
  int64_t handshake_timeout_us = 2'000'000;
  size_t max_output_bytes = 16u << 20;
  size_t max_connections = 4096;
  std::string log_path;                // the run log (JSONL, appended); empty: stderr only
};

// One run-log line, without the newline: {"t":1700000000.123,"event":"round","msg":"...",
// "epoch":"5",...}. "epoch" and "op_id" are decimal strings (64-bit values exceed the 2^53 that
// JSON readers hold exactly); the other integers are numbers. Pure; strings are escaped as JSON, invalid UTF-8 replaced by U+FFFD.
std::string run_log_line(double unix_time_s, const std::string& msg, const LogEvent& event);

// The revision of the last "sync" event among these run-log lines (a tail of the log: a first
// partial line is skipped), 0 when there is none. Pure.
uint64_t last_elected_revision(const std::string& log_tail);

class CoordinatorServer {
 public:
  static Result<std::unique_ptr<CoordinatorServer>> start(const CoordinatorServerOptions& options);
  ~CoordinatorServer();
  CoordinatorServer(const CoordinatorServer&) = delete;
  CoordinatorServer& operator=(const CoordinatorServer&) = delete;

  // "host:port" with the port actually bound.
  const std::string& address() const { return address_; }
  // Serves until stop(). Returns ok after a stop, or the error that ended it.
  Status run();
  // Async-signal-safe.
  void stop();

 private:
  struct Connection;
  explicit CoordinatorServer(const CoordinatorServerOptions& options);
  void accept_all(int64_t now_us);
  void on_readable(Connection& c, int64_t now_us);
  void on_payload(Connection& c, std::vector<std::byte>& payload, int64_t now_us);
  void apply(const std::vector<Action>& actions);
  void queue(Connection& c, std::vector<std::byte> bytes);
  void flush(Connection& c);
  void close_connection(Connection& c, std::string why, int64_t now_us);  // c is gone after
  void log(const std::string& line, const LogEvent& event = {});

  CoordinatorServerOptions options_;
  CoordinatorState state_;
  int listen_fd_ = -1;
  int stop_fds_[2] = {-1, -1};
  std::string address_;
  ConnId next_conn_ = 1;
  std::map<ConnId, std::unique_ptr<Connection>> connections_;
  std::FILE* log_file_ = nullptr;  // the run log, if any
  bool log_failed_ = false;        // a write to it failed (reported once)
};

}  // namespace meridian::coord
