#include "meridian/local_launch.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

namespace meridian {

namespace {

std::atomic<int> g_forward_signal{0};
void on_signal(int sig) { g_forward_signal.store(sig); }

std::string describe(int status) {
  if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("signal ") + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  return "status " + std::to_string(status);
}

}  // namespace

LocalRank local_rank_from_env() {
  LocalRank r;
  const char* rank = std::getenv("MERIDIAN_LOCAL_RANK");
  const char* world = std::getenv("MERIDIAN_LOCAL_WORLD_SIZE");
  const char* rendezvous = std::getenv("MERIDIAN_LOCAL_RENDEZVOUS");
  if (!rank || !world || !rendezvous) return r;
  r.rank = std::atoi(rank);
  r.world = std::atoi(world);
  r.rendezvous = rendezvous;
  return r;
}

int launch_local_ranks(int world, const std::string& run_dir, char** argv) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) {
    std::fprintf(stderr, "error: %s: cannot create the run directory (%s)\nhint: set run.dir to a writable path\n", run_dir.c_str(),
                 ec.message().c_str());
    return 2;
  }
  const std::string rendezvous = (fs::path(run_dir) / (".local-rendezvous." + std::to_string(::getpid()))).string();
  fs::remove(rendezvous, ec);
  std::printf("# %d local ranks (rank 0 writes here, rank r to %s/rank_<r>.log)\n", world, run_dir.c_str());
  std::fflush(stdout);

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  std::vector<pid_t> pids(static_cast<size_t>(world), -1);
  const pid_t launcher = ::getpid();
  for (int r = 0; r < world; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("fork");
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGKILL);
      return 1;
    }
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // a rank never outlives its launcher
      if (::getppid() != launcher) std::_Exit(1);
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      ::setenv("MERIDIAN_LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("MERIDIAN_LOCAL_WORLD_SIZE", std::to_string(world).c_str(), 1);
      ::setenv("MERIDIAN_LOCAL_RENDEZVOUS", rendezvous.c_str(), 1);
      if (r > 0) {
        const std::string log = (fs::path(run_dir) / ("rank_" + std::to_string(r) + ".log")).string();
        const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (fd >= 0) {
          ::dup2(fd, 1);
          ::dup2(fd, 2);
        }
      }
      ::execv("/proc/self/exe", argv);
      std::fprintf(stderr, "error: local rank %d: cannot start /proc/self/exe: %s\n", r, std::strerror(errno));
      std::_Exit(127);
    }
    pids[static_cast<size_t>(r)] = pid;
  }

  // Wait for every rank; the first to fail takes the others down.
  int exit_code = 0;
  int running = world;
  bool stopping = false;
  auto deadline = std::chrono::steady_clock::time_point::max();
  while (running > 0) {
    if (const int sig = g_forward_signal.exchange(0); sig != 0) {
      for (pid_t p : pids)
        if (p > 0) ::kill(p, sig);
    }
    // Ranks that ended since the last look. After a first failure, a short grace collects the
    // ranks it took with it (a peer of a dead rank aborts on the broken local group), so that
    // the error names the rank that failed first, not one that followed it.
    struct Ended { int rank; pid_t pid; int status; };
    std::vector<Ended> failed;
    auto reap = [&] {
      int status = 0;
      struct rusage usage {};
      const pid_t pid = ::wait4(-1, &status, WNOHANG, &usage);
      if (pid <= 0) return false;
      for (int r = 0; r < world; ++r) {
        if (pids[static_cast<size_t>(r)] != pid) continue;
        pids[static_cast<size_t>(r)] = -1;
        --running;
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (ok) std::printf("# local rank %d: peak resident memory %.1f MB\n", r, static_cast<double>(usage.ru_maxrss) / 1024.0);
        else failed.push_back({r, pid, status});
      }
      return true;
    };
    if (!reap()) {
      if (stopping && std::chrono::steady_clock::now() > deadline) {
        for (pid_t p : pids)
          if (p > 0) ::kill(p, SIGKILL);
        deadline = std::chrono::steady_clock::time_point::max();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    if (failed.empty() || stopping) continue;
    const auto grace = std::chrono::steady_clock::now() + std::chrono::milliseconds(300);
    while (running > 0 && std::chrono::steady_clock::now() < grace)
      if (!reap()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    // The first cause: a rank that did not die of a broken peer (Gloo aborts, SIGABRT, or its
    // write to the dead peer's socket raises SIGPIPE).
    auto first = std::find_if(failed.begin(), failed.end(), [](const Ended& f) {
      return !(WIFSIGNALED(f.status) && (WTERMSIG(f.status) == SIGABRT || WTERMSIG(f.status) == SIGPIPE));
    });
    if (first == failed.end()) first = failed.begin();
    const int r = first->rank, status = first->status;
    std::string also;
    for (const Ended& other : failed)
      if (other.rank != r) also += "; local rank " + std::to_string(other.rank) + " ended after it with " + describe(other.status);
    std::fprintf(stderr, "error: local rank %d (pid %d) ended with %s%s; stopping the node's other %d rank(s)\n", r, first->pid,
                 describe(status).c_str(), also.c_str(), running);
    const std::string where = r == 0 ? "the output above" : (fs::path(run_dir) / ("rank_" + std::to_string(r) + ".log")).string();
    if (WIFEXITED(status) && WEXITSTATUS(status) == 2)  // bad input: the rank printed its error and hint
      std::fprintf(stderr, "hint: see %s\n", where.c_str());
    else
      std::fprintf(stderr, "hint: see %s; continue the node with --resume %s\n", where.c_str(), run_dir.c_str());
    exit_code = 1;
    stopping = true;
    for (pid_t p : pids)
      if (p > 0) ::kill(p, SIGTERM);
    deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  }
  fs::remove(rendezvous, ec);
  return exit_code;
}

}  // namespace meridian
