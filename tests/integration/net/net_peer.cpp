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
#include <csignal>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/hash.h"
#include "net/communicator.h"
#include "net/membership/socket_io.h"

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

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  CommunicatorOptions options;
  std::string token_file, codec_name = "fp32";
  size_t world = 1, rounds = 1, count = 1000, max_retries = 5;
  long hang_at_round = -1;
  bool gate_stdin = false;
  size_t update_every = 0, first_round = 0;
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
    else return fail("unknown option " + a);
  }
  const std::optional<Codec> codec = parse_codec(codec_name);
  if (!codec) return fail("unknown codec " + codec_name);
  Result<std::string> token = membership::read_token_file(token_file);
  if (!token) return fail(token.status().to_string());
  options.token = *token;
  options.connect_timeout_ms = 5000;
  options.topology_timeout_ms = 20000;

  Result<std::unique_ptr<Communicator>> comm = Communicator::connect(options);
  if (!comm) return fail(comm.status().message() + (comm.status().hint().empty() ? "" : " (hint: " + comm.status().hint() + ")"));
  Communicator& c = **comm;
  std::printf("registered peer=%u listen=%s\n", c.peer_id(), c.listen_address().c_str());
  std::fflush(stdout);
  if (Status st = c.update_topology(world); !st.is_ok()) return fail(st.message());
  std::printf("view epoch=%llu size=%zu rank=%zu\n", static_cast<unsigned long long>(c.view().epoch),
              c.view().members.size(), c.rank());
  std::fflush(stdout);

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
      const NetStatus st = c.all_reduce(buf.data(), buf.size(), *codec, ReduceOp::kSum, &stats);
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
        std::printf("round=%zu ok epoch=%llu size=%zu hash=%016llx seconds=%.6f gbps=%.3f bytes_sent=%llu verified=%d\n",
                    round, static_cast<unsigned long long>(stats.epoch), c.view().members.size(),
                    static_cast<unsigned long long>(xxh3_64(buf.data(), buf.size() * sizeof(float))), stats.seconds,
                    stats.gbit_per_s(), static_cast<unsigned long long>(stats.bytes_sent), verified);
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
