// Test support for the comms layer's real-process tests: a child process on pipes whose stdout
// lines the tests wait for (with a deadline, never a sleep), and a "key=value" field reader.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <optional>
#include <string>
#include <vector>

#include "net/membership/socket_io.h"

namespace meridian::test_support {

using meridian::net::membership::steady_now_us;

// A child process with its stdin, stdout and stderr on pipes.
class Process {
 public:
  explicit Process(const std::vector<std::string>& argv) {
    int in[2], out[2], err[2];
    EXPECT_EQ(::pipe2(in, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(out, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(err, O_CLOEXEC), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      std::vector<char*> args;
      for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      std::_Exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    ::close(err[1]);
    stdin_fd_ = in[1];
    stdout_fd_ = out[0];
    stderr_fd_ = err[0];
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    for (int fd : {stdin_fd_, stdout_fd_, stderr_fd_}) {
      if (fd >= 0) ::close(fd);
    }
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }

  // The next stdout line that contains `needle`, or nullopt at the deadline or end of output.
  std::optional<std::string> wait_for(const std::string& needle, int timeout_ms) {
    const int64_t deadline = steady_now_us() + int64_t{timeout_ms} * 1000;
    for (;;) {
      const size_t nl = out_.find('\n');
      if (nl != std::string::npos) {
        std::string line = out_.substr(0, nl);
        out_.erase(0, nl + 1);
        lines_.push_back(line);
        if (line.find(needle) != std::string::npos) return line;
        continue;
      }
      if (!pump(deadline)) return std::nullopt;
    }
  }
  // Everything the process wrote on stderr so far (reads what is available, waits up to timeout_ms
  // for `needle` to show up).
  std::string stderr_text(const std::string& needle = "", int timeout_ms = 0) {
    const int64_t deadline = steady_now_us() + int64_t{timeout_ms} * 1000;
    while (err_.find(needle) == std::string::npos && pump(deadline)) {
    }
    pump(0);
    return err_;
  }
  void send_line(const std::string& line) {
    const std::string l = line + "\n";
    ASSERT_EQ(::write(stdin_fd_, l.data(), l.size()), static_cast<ssize_t>(l.size()));
  }
  void signal(int sig) { ::kill(pid_, sig); }
  // Exit code, or -1 if it did not exit in time (or died of a signal).
  int wait_exit(int timeout_ms) {
    const int64_t deadline = steady_now_us() + int64_t{timeout_ms} * 1000;
    while (stdout_fd_ >= 0 && pump(deadline)) {  // drain to EOF so that the child is not blocked on a pipe
    }
    // Wait for the exit itself on a pidfd (readable when the child exits), within the deadline.
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
    if (pidfd >= 0) {
      const int64_t left = deadline - steady_now_us();
      pollfd pfd{pidfd, POLLIN, 0};
      const int ready = ::poll(&pfd, 1, left <= 0 ? 0 : static_cast<int>((left + 999) / 1000));
      ::close(pidfd);
      if (ready != 1) return -1;
    }
    int status = 0;
    if (::waitpid(pid_, &status, pidfd >= 0 ? WNOHANG : 0) != pid_) return -1;
    exited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  // Reads what is available on stdout/stderr, waiting until the deadline. False at the
  // deadline or when stdout is closed.
  bool pump(int64_t deadline_us) {
    pollfd fds[2] = {{stdout_fd_, POLLIN, 0}, {stderr_fd_, POLLIN, 0}};
    const int64_t left = deadline_us - steady_now_us();
    const int timeout = left <= 0 ? 0 : static_cast<int>((left + 999) / 1000);
    if (::poll(fds, 2, timeout) <= 0) return false;
    bool more = true;
    char buf[4096];
    if (fds[1].revents & (POLLIN | POLLHUP)) {
      const ssize_t n = ::read(stderr_fd_, buf, sizeof(buf));
      if (n > 0) err_.append(buf, static_cast<size_t>(n));
      if (n <= 0) fds[1].fd = -1;
    }
    if (fds[0].revents & (POLLIN | POLLHUP)) {
      const ssize_t n = ::read(stdout_fd_, buf, sizeof(buf));
      if (n > 0) out_.append(buf, static_cast<size_t>(n));
      if (n <= 0) {
        ::close(stdout_fd_);
        stdout_fd_ = -1;
        more = false;
      }
    }
    return more;
  }

  pid_t pid_ = -1;
  bool exited_ = false;
  int stdin_fd_ = -1, stdout_fd_ = -1, stderr_fd_ = -1;
  std::string out_, err_;
  std::vector<std::string> lines_;
};

// The value of " key=value" in a line, or "".
inline std::string field(const std::string& line, const std::string& key) {
  const std::string needle = key + "=";
  size_t at = line.rfind(' ' + needle);
  at = at == std::string::npos ? (line.rfind(needle, 0) == 0 ? 0 : std::string::npos) : at + 1;
  if (at == std::string::npos) return "";
  const size_t begin = at + needle.size();
  return line.substr(begin, line.find(' ', begin) - begin);
}

}  // namespace meridian::test_support
