// net_peer: a torch-free test peer for the integration tests. Joins a run, waits for a view of
// --world peers, runs --rounds all-reduces (sum) of --count floats on deterministic data, and
// prints one line per event on stdout (flushed), which the tests read to synchronise:
//   registered peer=ID listen=ADDR
//   view epoch=E size=N rank=R
//   round=K start epoch=E
//   round=K ok epoch=E size=N hash=H seconds=S gbps=G bytes_sent=B verified=0|1
//   round=K error ms=MS unchanged=0|1 STATUS
//   hang round=K            (--hang-at-round: stops before that round, waiting to be killed)
//   done
// --gate-stdin 1: wait for one line on stdin before each round (the test paces the rounds).
// --first-round K: start at round K (a late joiner that enters the members' round K).
// --update-every K: call update_topology before every K-th round, like a trainer at each outer
// step, which is when joiners are admitted.
// With the fp32 codec every value is a small integer, so the sum is exact and each peer checks
// its result against the sum it computes itself from the view's peer ids (verified=1).
// A failed round is retried under the next view (update_topology), at most --max-retries times.
//
// --mode sync: a shared-state holder for the sync tests. Holds --state-buffers buffers of
// --buffer-bytes deterministic bytes (--empty-state 1: none, a late joiner), joins a view of
// --world peers, then executes one command per stdin line and prints one line per command:
//   step        -> stepped revision=R hash=H        (every peer mutates its state identically)
//   stale B     -> staled buffer=B hash=H           (flip bytes of buffer B only)
//   update      -> view epoch=E size=N rank=R       (update_topology: admits joiners)
//   sync        -> sync ok epoch=E hash=H revision=R downloaded=B served=S buffers=K seconds=T transfer_seconds=X gbps=G
//                  sync error ms=MS unchanged=0|1 hash=H STATUS
//   leave       -> done
// --hang-in-sync 1: at the first sync, once the election is in, stop at the fault point
// state_sync.transfer (before serving anything; core/fault.h prints "fault point
// state_sync.transfer reached (hang)"), waiting to be killed.
#include <csignal>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/fault.h"
#include "core/hash.h"
#include "net/communicator.h"
#include "net/membership/socket_io.h"
#include "net/state_sync/shared_state.h"

namespace {

using namespace meridian;
using namespace meridian::net;

float value_of(PeerId peer, size_t round, size_t i) {
  return static_cast<float>((peer + 1) * 3 + (round + 1) * 5 + (i % 13));
}

void fill(std::vector<float>& buf, PeerId peer, size_t round) {
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = value_of(peer, round, i);
}

int fail(const std::string& what) {
  std::fprintf(stderr, "error: %s\n", what.c_str());
  return 1;
}

void say(const char* format, ...) __attribute__((format(printf, 1, 2)));
void say(const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::vprintf(format, args);
  va_end(args);
  std::fflush(stdout);
}

std::string hex(const Hash128& h) { return h.hex(); }

// Buffer b of the initial state: 64-bit words from a counter hash, so every peer builds the same.
std::vector<std::byte> initial_buffer(size_t b, size_t bytes) {
  std::vector<std::byte> out(bytes);
  uint64_t x = 0x9e3779b97f4a7c15ull * (b + 1);
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out.data() + i, &x, 8);
  }
  return out;
}

// The sync-test peer (see the file comment).
int run_sync_mode(Communicator& c, size_t buffers, size_t buffer_bytes, bool empty_state) {
  SharedState state;
  if (!empty_state) {
    for (size_t b = 0; b < buffers; ++b) state.put("buf" + std::to_string(b), BufferDtype::kU8, initial_buffer(b, buffer_bytes));
  }
  char line[256];
  while (std::fgets(line, sizeof(line), stdin) != nullptr) {
    const std::string cmd(line, std::strcspn(line, "\r\n"));
    if (cmd == "step") {
      state.set_revision(state.revision() + 1);
      for (const SharedState::Buffer& buf : std::vector<SharedState::Buffer>(state.buffers())) {
        std::span<std::byte> d = state.data(buf.name);
        for (size_t i = 0; i < d.size(); i += 4096) d[i] ^= std::byte{static_cast<uint8_t>(state.revision() * 31 + 7)};
      }
      say("stepped revision=%llu hash=%s\n", static_cast<unsigned long long>(state.revision()), hex(state.state_hash()).c_str());
    } else if (cmd.rfind("stale ", 0) == 0) {
      const std::string name = "buf" + cmd.substr(6);
      if (state.find(name) == nullptr) return fail("no buffer " + name);
      std::span<std::byte> d = state.data(name);
      for (size_t i = 0; i < d.size(); i += 512) d[i] ^= std::byte{0x5a};
      say("staled buffer=%s hash=%s\n", name.c_str(), hex(state.state_hash()).c_str());
    } else if (cmd == "update") {
      if (Status st = c.update_topology(0); !st.is_ok()) {
        say("topology error %s\n", st.message().c_str());
        continue;
      }
      say("view epoch=%llu size=%zu rank=%zu\n", static_cast<unsigned long long>(c.view().epoch), c.view().members.size(),
          c.rank());
    } else if (cmd == "sync") {
      const Hash128 before = state.state_hash();
      const int64_t t0 = membership::steady_now_us();
      SyncOpStats stats;
      const NetStatus st = c.sync_shared_state(state, &stats);
      const Hash128 after = state.state_hash();
      if (st.is_ok()) {
        say("sync ok epoch=%llu hash=%s revision=%llu downloaded=%llu served=%llu buffers=%llu seconds=%.6f "
            "transfer_seconds=%.6f gbps=%.3f\n",
            static_cast<unsigned long long>(stats.epoch), hex(after).c_str(),
            static_cast<unsigned long long>(state.revision()), static_cast<unsigned long long>(stats.bytes_downloaded),
            static_cast<unsigned long long>(stats.bytes_served), static_cast<unsigned long long>(stats.buffers_downloaded),
            stats.seconds, stats.transfer_seconds, stats.gbit_per_s());
      } else {
        say("sync error ms=%lld unchanged=%d hash=%s %s\n",
            static_cast<long long>((membership::steady_now_us() - t0) / 1000), before == after ? 1 : 0,
            hex(after).c_str(), st.to_string().c_str());
      }
    } else if (cmd == "leave") {
      break;
    } else if (!cmd.empty()) {
      return fail("unknown command '" + cmd + "'");
    }
  }
  c.leave();
  say("done\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  CommunicatorOptions options;
  std::string token_file, codec_name = "fp32";
  size_t world = 1, rounds = 1, count = 1000, max_retries = 5;
  long hang_at_round = -1;
  bool gate_stdin = false;
  size_t update_every = 0, first_round = 0;
  std::string mode = "allreduce";
  size_t state_buffers = 4, buffer_bytes = 1u << 20;
  bool empty_state = false, hang_in_sync = false, background = false;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--coordinator") options.coordinator_address = v;
    else if (a == "--token-file") token_file = v;
    else if (a == "--listen") options.listen_address = v;
    else if (a == "--world") world = std::strtoul(v.c_str(), nullptr, 10);
    else if (a == "--rounds") rounds = std::strtoul(v.c_str(), nullptr, 10);
    else if (a == "--count") count = std::strtoul(v.c_str(), nullptr, 10);
    else if (a == "--codec") codec_name = v;
    else if (a == "--op-timeout-ms") options.op_timeout_ms = std::atol(v.c_str());
    else if (a == "--hang-at-round") hang_at_round = std::atol(v.c_str());
    else if (a == "--protocol-version") options.protocol_version = static_cast<uint16_t>(std::atoi(v.c_str()));
    else if (a == "--gate-stdin") gate_stdin = v == "1";
    else if (a == "--first-round") first_round = std::strtoul(v.c_str(), nullptr, 10);
    else if (a == "--update-every") update_every = std::strtoul(v.c_str(), nullptr, 10);
    else if (a == "--max-retries") max_retries = std::strtoul(v.c_str(), nullptr, 10);
    else if (a == "--mode") mode = v;
    else if (a == "--state-buffers") state_buffers = std::strtoul(v.c_str(), nullptr, 10);
    else if (a == "--buffer-bytes") buffer_bytes = std::strtoul(v.c_str(), nullptr, 10);
    else if (a == "--empty-state") empty_state = v == "1";
    else if (a == "--hang-in-sync") hang_in_sync = v == "1";
    else if (a == "--background") background = v == "1";  // start_all_reduce, computing meanwhile
    else return fail("unknown option " + a);
  }
  const std::optional<Codec> codec = parse_codec(codec_name);
  if (!codec) return fail("unknown codec " + codec_name);
  Result<std::string> token = membership::read_token_file(token_file);
  if (!token) return fail(token.status().to_string());
  options.token = *token;
  options.connect_timeout_ms = 5000;
  options.topology_timeout_ms = 20000;
  // The test kills us at the fault point, while the others transfer.
  if (hang_in_sync && !fault::arm("state_sync.transfer:hang").is_ok()) return fail("cannot arm the fault point");

  Result<std::unique_ptr<Communicator>> comm = Communicator::connect(options);
  if (!comm) return fail(comm.status().message() + (comm.status().hint().empty() ? "" : " (hint: " + comm.status().hint() + ")"));
  Communicator& c = **comm;
  std::printf("registered peer=%u listen=%s\n", c.peer_id(), c.listen_address().c_str());
  std::fflush(stdout);
  if (Status st = c.update_topology(world); !st.is_ok()) return fail(st.message());
  std::printf("view epoch=%llu size=%zu rank=%zu\n", static_cast<unsigned long long>(c.view().epoch),
              c.view().members.size(), c.rank());
  std::fflush(stdout);

  if (mode == "sync") return run_sync_mode(c, state_buffers, buffer_bytes, empty_state);
  if (mode != "allreduce") return fail("unknown mode " + mode);

  std::vector<float> buf(count), input(count);
  for (size_t round = first_round; round < rounds; ++round) {
    if (gate_stdin) {  // the test releases each round with one line on our stdin
      char line[64];
      if (std::fgets(line, sizeof(line), stdin) == nullptr) return fail("stdin closed before round " + std::to_string(round));
    }
    if (update_every > 0 && round > first_round && round % update_every == 0) {  // an outer step: admit joiners
      if (Status st = c.update_topology(0); !st.is_ok()) return fail(st.message());
      std::printf("view epoch=%llu size=%zu rank=%zu\n", static_cast<unsigned long long>(c.view().epoch),
                  c.view().members.size(), c.rank());
      std::fflush(stdout);
    }
    if (static_cast<long>(round) == hang_at_round) {
      std::printf("hang round=%zu\n", round);
      std::fflush(stdout);
      for (;;) ::pause();  // the test kills or stops us here, while the others are in the round
    }
    for (size_t attempt = 0;; ++attempt) {
      fill(input, c.peer_id(), round);
      buf = input;
      std::printf("round=%zu start epoch=%llu\n", round, static_cast<unsigned long long>(c.view().epoch));
      std::fflush(stdout);
      OpStats stats;
      const int64_t t0 = membership::steady_now_us();
      NetStatus st;
      uint64_t computed = 0;  // work done on this thread while the all-reduce ran (--background 1)
      if (background) {
        PendingAllReduce pending = c.start_all_reduce(buf.data(), buf.size(), *codec, ReduceOp::kSum);
        volatile double sink = 0;
        while (!pending.done()) {
          for (int k = 0; k < 10000; ++k) sink = sink + 1e-9 * k;
          ++computed;
        }
        st = pending.finish(&stats);
      } else {
        st = c.all_reduce(buf.data(), buf.size(), *codec, ReduceOp::kSum, &stats);
      }
      if (st.is_ok()) {
        int verified = 0;
        if (*codec == Codec::kFp32) {
          verified = 1;
          for (size_t i = 0; i < count && verified; ++i) {
            float expect = 0;
            for (const membership::ViewMember& m : c.view().members) expect += value_of(m.peer_id, round, i);
            verified = buf[i] == expect ? 1 : 0;
          }
        }
        std::printf("round=%zu ok epoch=%llu size=%zu hash=%016llx seconds=%.6f gbps=%.3f bytes_sent=%llu verified=%d computed=%llu\n",
                    round, static_cast<unsigned long long>(stats.epoch), c.view().members.size(),
                    static_cast<unsigned long long>(xxh3_64(buf.data(), buf.size() * sizeof(float))), stats.seconds,
                    stats.gbit_per_s(), static_cast<unsigned long long>(stats.bytes_sent), verified,
                    static_cast<unsigned long long>(computed));
        std::fflush(stdout);
        break;
      }
      const long long ms = static_cast<long long>((membership::steady_now_us() - t0) / 1000);
      const int unchanged = buf == input ? 1 : 0;
      std::printf("round=%zu error ms=%lld unchanged=%d %s\n", round, ms, unchanged, st.to_string().c_str());
      std::fflush(stdout);
      if (attempt >= max_retries) return fail("round " + std::to_string(round) + " failed " + std::to_string(attempt + 1) + " times");
      if (Status ts = c.update_topology(0); !ts.is_ok()) {
        std::printf("topology error %s\n", ts.message().c_str());
        std::fflush(stdout);
        continue;
      }
      std::printf("view epoch=%llu size=%zu rank=%zu\n", static_cast<unsigned long long>(c.view().epoch),
                  c.view().members.size(), c.rank());
      std::fflush(stdout);
    }
  }
  c.leave();
  std::printf("done\n");
  std::fflush(stdout);
  return 0;
}
