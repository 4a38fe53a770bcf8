// All-reduce benchmark over the TCP transport: N peers run Meridian's all-reduce on a buffer
// of --size bytes of fp32 with a wire codec, then (when built with libtorch) the same
// all-reduce through c10d's ProcessGroupGloo on the same machine and network, and print the
// time, the bytes each peer sent, the bus bandwidth and, with --link-gbit, the efficiency
// against the link rate, and the ratio of Gloo's time to ours.
//
//   bench_allreduce --peers 4 --size 67108864 --codec int8 [--iters 5] [--streams 2]
//                   [--chunk-values 65536] [--link-gbit 1] [--no-gloo]
//       N peers as threads of this process, on 127.0.0.1 with OS-chosen ports.
//   bench_allreduce --rank R --addresses 10.9.0.1:29600,10.9.0.2:29600,... --gloo-port 29700 ...
//       one peer per process (scripts/netns-bench.sh runs one per network namespace); peer R
//       listens on addresses[R]; Gloo's TCPStore listens on addresses[0]'s host at --gloo-port.
//   bench_allreduce --state-sync --peers 4 --size 268435456 [--iters 3]
//       shared-state transfer: peers 0..N-2 hold the state (8 buffers), peer N-1 is fresh and
//       downloads it, striped over the N-1 sources; prints the download throughput.
//   bench_allreduce --probe --peers 4 [--size PROBE_BYTES]   (or with --rank/--addresses)
//       measures every directed link with the topology probe and prints the matrix and the
//       ring that maximises its slowest link.
//
// Definitions (per timed iteration; every peer starts together after a barrier, and the time
// is the slowest peer's):
//   bytes/peer   frames a peer sent, headers included (expected ~ 2(N-1)/N x encoded size)
//   busbw        2(N-1)/N x payload fp32 bytes x 8 / time: the rate an ideal fp32 all-reduce
//                would need on every link to finish in this time (as nccl-tests' busbw)
//   wire rate    bytes/peer x 8 / time: what each peer actually pushed onto its link
//   efficiency   wire rate / --link-gbit (the shaped rate: each peer has one uplink)
// Gloo always moves fp32 (it has no wire codecs), so "ratio" compares our all-reduce with the
// given codec to Gloo's fp32 all-reduce of the same buffer: the speed-up a user sees.
#include "bench_allreduce.h"

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/hash.h"
#include "net/collective/all_reduce.h"
#include "net/state_sync/state_sync.h"
#include "net/topology/probe.h"
#include "net/topology/ring_order.h"
#include "net/transport/tcp_transport.h"

#ifdef MERIDIAN_BENCH_GLOO
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>
#endif

using namespace meridian;
using namespace meridian::net;

namespace {

struct Config {
  size_t peers = 4;
  size_t size_bytes = 64u << 20;
  Codec codec = Codec::kFp32;
  int iters = 5;
  size_t streams = 2;
  size_t chunk_values = 0;  // 0: pieces of about 64 KiB on the wire for the codec (see main)
  std::optional<size_t> window_bytes;  // unset: the all-reduce default; 0: no window
  int socket_buffer_bytes = 0;  // 0: the transport default
  double link_gbit = 0;
  bool gloo = true;
  bool state_sync = false;
  bool probe = false;
  std::optional<size_t> rank;         // process mode
  std::vector<std::string> addresses; // process mode
  int gloo_port = 29700;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "bench_allreduce: %s\n"
               "usage: bench_allreduce [--peers N] [--size BYTES] [--codec fp32|bf16|fp16|int8|prime_int8]\n"
               "       [--iters K] [--streams S] [--chunk-values V] [--window-bytes B] [--socket-buffer BYTES] [--link-gbit R] [--no-gloo] [--state-sync] [--probe]\n"
               "       [--rank R --addresses H:P,H:P,... [--gloo-port P]]\n",
               why.c_str());
  std::exit(2);
}

Config parse(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    const std::string key = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(key + " needs a value");
      return argv[++i];
    };
    if (key == "--peers") c.peers = std::stoul(value());
    else if (key == "--size") c.size_bytes = std::stoull(value());
    else if (key == "--codec") {
      const std::string name = value();
      const std::optional<Codec> codec = parse_codec(name);
      if (!codec) usage("unknown codec " + name);
      c.codec = *codec;
    } else if (key == "--iters") c.iters = std::stoi(value());
    else if (key == "--streams") c.streams = std::stoul(value());
    else if (key == "--chunk-values") c.chunk_values = std::stoul(value());
    else if (key == "--window-bytes") c.window_bytes = std::stoul(value());
    else if (key == "--socket-buffer") c.socket_buffer_bytes = std::stoi(value());
    else if (key == "--link-gbit") c.link_gbit = std::stod(value());
    else if (key == "--no-gloo") c.gloo = false;
    else if (key == "--state-sync") c.state_sync = true;
    else if (key == "--probe") c.probe = true;
    else if (key == "--rank") c.rank = std::stoul(value());
    else if (key == "--gloo-port") c.gloo_port = std::stoi(value());
    else if (key == "--addresses") {
      const std::string list = value();
      size_t start = 0;
      while (start <= list.size()) {
        const size_t comma = list.find(',', start);
        c.addresses.push_back(list.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    } else usage("unknown option " + key);
  }
  if (c.rank) {
    c.peers = c.addresses.size();
    if (*c.rank >= c.peers) usage("--rank outside --addresses");
  }
  if (c.peers < 1 || c.iters < 1) usage("--peers and --iters must be positive");
  if (c.chunk_values == 0) c.chunk_values = piece_values_for(c.codec);
  return c;
}

int64_t now_us() { return SteadyClock().now_us(); }

struct PeerTimes {
  std::vector<double> seconds;  // per timed iteration: the slowest peer's time
  uint64_t bytes_sent = 0;      // this peer, per iteration
};

// A barrier over the transport: a one-value all-reduce. Returns false on failure.
bool net_barrier(AllReduceRunner& runner, const std::vector<PeerId>& members, uint64_t op_id) {
  float one = 1;
  AllReduceOptions o{.codec = Codec::kFp32, .op = ReduceOp::kSum, .timeout_ms = 120'000, .op_id = op_id};
  return runner.run(members, std::span<float>(&one, 1), o).is_ok();
}

// Every peer's elapsed seconds, gathered with a sum all-reduce of one-hot vectors.
std::optional<double> slowest(AllReduceRunner& runner, const std::vector<PeerId>& members, size_t rank, double mine,
                              uint64_t op_id) {
  std::vector<float> all(members.size(), 0.0f);
  all[rank] = static_cast<float>(mine);
  AllReduceOptions o{.codec = Codec::kFp32, .op = ReduceOp::kSum, .timeout_ms = 120'000, .op_id = op_id};
  if (!runner.run(members, all, o).is_ok()) return std::nullopt;
  return *std::max_element(all.begin(), all.end());
}

std::vector<float> make_input(size_t count, size_t rank) {
  std::vector<float> v(count);
  SplitMix64 rng(1234 + rank);
  for (float& x : v) x = static_cast<float>(rng.uniform() * 2 - 1) * 1e-3f;
  return v;
}

// One peer's Meridian run: warm-up, then iters timed all-reduces.
std::optional<PeerTimes> run_meridian(TcpTransport& transport, const Config& c, size_t rank) {
  std::vector<PeerId> members(c.peers);
  for (size_t r = 0; r < c.peers; ++r) members[r] = static_cast<PeerId>(r);
  AllReduceRunner runner(transport);
  std::vector<float> buffer = make_input(c.size_bytes / 4, rank);
  uint64_t op = 1;
  PeerTimes times;
  for (int it = -1; it < c.iters; ++it) {  // iteration -1 is the warm-up
    if (!net_barrier(runner, members, op++)) {
      std::fprintf(stderr, "rank %zu: barrier failed\n", rank);
      return std::nullopt;
    }
    AllReduceOptions o{.codec = c.codec, .op = ReduceOp::kSum, .chunk_values = c.chunk_values, .timeout_ms = 600'000,
                       .op_id = op++};
    if (c.window_bytes) o.window_bytes = *c.window_bytes;
    AllReduceStats stats;
    const int64_t t0 = now_us();
    const NetStatus st = runner.run(members, buffer, o, &stats);
    const double mine = (now_us() - t0) * 1e-6;
    if (!st.is_ok()) {
      std::fprintf(stderr, "rank %zu: all-reduce failed: %s\n", rank, st.to_string().c_str());
      return std::nullopt;
    }
    const std::optional<double> worst = slowest(runner, members, rank, mine, op++);
    if (!worst) {
      std::fprintf(stderr, "rank %zu: gathering the times failed\n", rank);
      return std::nullopt;
    }
    if (it >= 0) times.seconds.push_back(*worst);
    times.bytes_sent = stats.bytes_sent_total;
  }
  return times;
}

#ifdef MERIDIAN_BENCH_GLOO
// The same all-reduce through c10d's ProcessGroupGloo (fp32, sum).
std::optional<std::vector<double>> run_gloo(const c10::intrusive_ptr<c10d::Store>& store, const std::string& host,
                                            const Config& c, size_t rank) {
  auto options = c10d::ProcessGroupGloo::Options::create();
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
  options->timeout = std::chrono::milliseconds(600'000);
  auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, static_cast<int>(rank), static_cast<int>(c.peers), options);
  std::vector<float> input = make_input(c.size_bytes / 4, rank);
  at::Tensor tensor = torch::from_blob(input.data(), {static_cast<int64_t>(input.size())}, torch::kFloat32).clone();
  std::vector<double> seconds;
  for (int it = -1; it < c.iters; ++it) {
    pg->barrier()->wait();
    std::vector<at::Tensor> tensors = {tensor};
    const int64_t t0 = now_us();
    pg->allreduce(tensors)->wait();
    const double mine = (now_us() - t0) * 1e-6;
    at::Tensor all = torch::zeros({static_cast<int64_t>(c.peers)}, torch::kFloat64);
    all[static_cast<int64_t>(rank)] = mine;
    std::vector<at::Tensor> gather = {all};
    pg->allreduce(gather)->wait();
    if (it >= 0) seconds.push_back(all.max().item<double>());
  }
  return seconds;
}
#endif

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

void report(const Config& c, const PeerTimes& ours, const std::optional<std::vector<double>>& gloo) {
  const double n = static_cast<double>(c.peers);
  const double t = median(ours.seconds);
  const double best = *std::min_element(ours.seconds.begin(), ours.seconds.end());
  const double busbw = c.peers > 1 ? 2 * (n - 1) / n * static_cast<double>(c.size_bytes) * 8 / t / 1e9 : 0;
  const double wire = static_cast<double>(ours.bytes_sent) * 8 / t / 1e9;
  std::printf("allreduce peers=%zu size=%zu codec=%s streams=%zu iters=%d\n", c.peers, c.size_bytes,
              std::string(codec_name(c.codec)).c_str(), c.streams, c.iters);
  std::printf("  meridian: time %.3f s (best %.3f)  bytes/peer %llu (%.3fx payload)  busbw %.2f Gbit/s  wire %.2f Gbit/s",
              t, best, static_cast<unsigned long long>(ours.bytes_sent),
              static_cast<double>(ours.bytes_sent) / static_cast<double>(std::max<size_t>(c.size_bytes, 1)), busbw, wire);
  if (c.link_gbit > 0) std::printf("  efficiency %.1f%% of %.3g Gbit/s", 100 * wire / c.link_gbit, c.link_gbit);
  std::printf("\n");
  if (gloo) {
    const double tg = median(*gloo);
    const double gbus = c.peers > 1 ? 2 * (n - 1) / n * static_cast<double>(c.size_bytes) * 8 / tg / 1e9 : 0;
    std::printf("  gloo fp32: time %.3f s (best %.3f)  busbw %.2f Gbit/s\n", tg,
                *std::min_element(gloo->begin(), gloo->end()), gbus);
    std::printf("  ratio (gloo time / meridian time): %.2fx\n", tg / t);
  } else {
    std::printf("  gloo: not run (%s)\n",
#ifdef MERIDIAN_BENCH_GLOO
                "--no-gloo"
#else
                "built without libtorch: configure with MERIDIAN_TORCH=ON"
#endif
    );
  }
  std::fflush(stdout);
}

// N transports on loopback, port 0, connected in parallel.
std::vector<std::unique_ptr<TcpTransport>> loopback_mesh(const Config& c) {
  std::vector<std::unique_ptr<TcpTransport>> peers;
  std::vector<std::string> addresses;
  for (size_t r = 0; r < c.peers; ++r) {
    TcpTransportOptions o;
    o.streams_per_peer = c.streams;
  if (c.socket_buffer_bytes > 0) o.socket_buffer_bytes = c.socket_buffer_bytes;
    if (c.socket_buffer_bytes > 0) o.socket_buffer_bytes = c.socket_buffer_bytes;
    o.max_message_bytes = 256u << 20;
    Result<std::unique_ptr<TcpTransport>> t = TcpTransport::listen(o);
    if (!t.is_ok()) {
      std::fprintf(stderr, "listen: %s\n", t.status().to_string().c_str());
      std::exit(1);
    }
    addresses.push_back("127.0.0.1:" + std::to_string((*t)->listen_port()));
    peers.push_back(std::move(t.value()));
  }
  std::vector<Status> status(c.peers);
  std::vector<std::thread> threads;
  const int64_t deadline = now_us() + 30'000'000;
  for (size_t r = 0; r < c.peers; ++r) {
    threads.emplace_back([&, r] { status[r] = peers[r]->connect_mesh(static_cast<PeerId>(r), addresses, deadline); });
  }
  for (auto& t : threads) t.join();
  for (size_t r = 0; r < c.peers; ++r) {
    if (!status[r].is_ok()) {
      std::fprintf(stderr, "connect_mesh rank %zu: %s\n", r, status[r].to_string().c_str());
      std::exit(1);
    }
  }
  return peers;
}

int threads_mode(const Config& c) {
  std::vector<std::unique_ptr<TcpTransport>> peers = loopback_mesh(c);
  std::vector<std::optional<PeerTimes>> ours(c.peers);
  {
    std::vector<std::thread> threads;
    for (size_t r = 0; r < c.peers; ++r) threads.emplace_back([&, r] { ours[r] = run_meridian(*peers[r], c, r); });
    for (auto& t : threads) t.join();
  }
  for (const auto& o : ours) {
    if (!o) return 1;
  }
  std::optional<std::vector<double>> gloo;
#ifdef MERIDIAN_BENCH_GLOO
  if (c.gloo && c.peers > 1) {
    auto store = c10::make_intrusive<c10d::HashStore>();
    std::vector<std::optional<std::vector<double>>> g(c.peers);
    std::vector<std::thread> threads;
    for (size_t r = 0; r < c.peers; ++r) threads.emplace_back([&, r] { g[r] = run_gloo(store, "127.0.0.1", c, r); });
    for (auto& t : threads) t.join();
    gloo = g[0];
  }
#endif
  report(c, *ours[0], gloo);
  return 0;
}

bool run_topology(Transport& transport, const Config& c, size_t rank);

int process_mode(const Config& c) {
  const size_t rank = *c.rank;
  const std::string& self = c.addresses[rank];
  const size_t colon = self.rfind(':');
  TcpTransportOptions o;
  o.listen_host = self.substr(0, colon);
  o.listen_port = static_cast<uint16_t>(std::stoi(self.substr(colon + 1)));
  o.streams_per_peer = c.streams;
  if (c.socket_buffer_bytes > 0) o.socket_buffer_bytes = c.socket_buffer_bytes;
  o.max_message_bytes = 256u << 20;
  Result<std::unique_ptr<TcpTransport>> t = TcpTransport::listen(o);
  if (!t.is_ok()) {
    std::fprintf(stderr, "rank %zu: listen: %s\n", rank, t.status().to_string().c_str());
    return 1;
  }
  const Status st = (*t)->connect_mesh(static_cast<PeerId>(rank), c.addresses, now_us() + 60'000'000);
  if (!st.is_ok()) {
    std::fprintf(stderr, "rank %zu: connect_mesh: %s\n", rank, st.to_string().c_str());
    return 1;
  }
  if (c.probe) {
    const bool ok = run_topology(**t, c, rank);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // see the linger below
    return ok ? 0 : 1;
  }
  const std::optional<PeerTimes> ours = run_meridian(**t, c, rank);
  // TcpTransport's destructor drops frames still queued for sending (it has no flush on
  // close), and this peer's last frames may be results the others still wait for: linger.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  if (!ours) return 1;
  std::optional<std::vector<double>> gloo;
#ifdef MERIDIAN_BENCH_GLOO
  if (c.gloo && c.peers > 1) {
    const std::string master = c.addresses[0].substr(0, c.addresses[0].rfind(':'));
    auto store = c10::make_intrusive<c10d::TCPStore>(master, static_cast<uint16_t>(c.gloo_port),
                                                     static_cast<int>(c.peers), rank == 0,
                                                     std::chrono::milliseconds(120'000), /*waitWorkers=*/true);
    gloo = run_gloo(store, o.listen_host, c, rank);
  }
#endif
  if (rank == 0) report(c, *ours, gloo);
  return 0;
}

// The topology probe on one peer: every pair, then the ring (printed by rank 0).
bool run_topology(Transport& transport, const Config& c, size_t rank) {
  std::vector<PeerId> view(c.peers);
  std::vector<std::pair<size_t, size_t>> pairs;
  for (size_t i = 0; i < c.peers; ++i) {
    view[i] = static_cast<PeerId>(i);
    for (size_t j = i + 1; j < c.peers; ++j) pairs.emplace_back(i, j);
  }
  const ProbeOptions options{.probe_bytes = c.size_bytes, .chunk_bytes = 256u << 10, .window = 8,
                             .max_direction_ms = 2000, .timeout_ms = 600'000, .probe_id = 1};
  std::vector<LinkMeasurement> links;
  const int64_t t0 = now_us();
  const NetStatus st = run_probe(transport, view, pairs, options, &links);
  if (!st.is_ok()) {
    std::fprintf(stderr, "rank %zu: probe failed: %s\n", rank, st.to_string().c_str());
    return false;
  }
  if (rank != 0) return true;
  BandwidthMatrix m(c.peers, std::vector<double>(c.peers, 0.0));
  for (const LinkMeasurement& l : links) m[l.from][l.to] = l.bits_per_s;
  std::printf("probe peers=%zu probe_bytes=%zu: %.2f s\n  Gbit/s from \\ to:\n", c.peers, c.size_bytes,
              (now_us() - t0) * 1e-6);
  for (size_t i = 0; i < c.peers; ++i) {
    std::printf("  %3zu:", i);
    for (size_t j = 0; j < c.peers; ++j) std::printf(" %7.3f", m[i][j] / 1e9);
    std::printf("\n");
  }
  const RingOrder ring = best_ring(m);
  std::printf("  ring:");
  for (size_t v : ring.order) std::printf(" %zu", v);
  std::printf("  slowest link %.3f Gbit/s (%s; upper bound %.3f)\n", ring.bottleneck_bits_per_s / 1e9,
              ring.exact ? "optimal" : "heuristic", ring.upper_bound_bits_per_s / 1e9);
  std::fflush(stdout);
  return true;
}

// Shared-state transfer on loopback: peer N-1 starts empty and downloads the whole state.
int state_sync_mode(const Config& c) {
  if (c.peers < 2) usage("--state-sync needs --peers >= 2");
  std::vector<std::unique_ptr<TcpTransport>> peers = loopback_mesh(c);
  std::vector<SharedState> states(c.peers);
  constexpr size_t kBuffers = 8;
  for (size_t r = 0; r + 1 < c.peers; ++r) {
    states[r].set_revision(42);
    for (size_t b = 0; b < kBuffers; ++b) {
      std::vector<std::byte> bytes(c.size_bytes / kBuffers);
      SplitMix64 rng(b);
      for (size_t i = 0; i + 8 <= bytes.size(); i += 8) {
        const uint64_t x = rng.next();
        std::memcpy(bytes.data() + i, &x, 8);
      }
      states[r].put("buffer." + std::to_string(b), BufferDtype::kF32, std::move(bytes));
    }
  }
  std::printf("state-sync peers=%zu (1 fresh, %zu sources) size=%zu streams=%zu\n", c.peers, c.peers - 1, c.size_bytes,
              c.streams);
  for (int it = 0; it < c.iters; ++it) {
    states[c.peers - 1] = SharedState();
    std::vector<PeerReport> reports;
    for (size_t r = 0; r < c.peers; ++r) reports.push_back(states[r].report(static_cast<PeerId>(r)));
    const ElectedHashes elected = elect(reports);
    std::vector<PeerId> view(c.peers);
    for (size_t r = 0; r < c.peers; ++r) view[r] = static_cast<PeerId>(r);
    std::vector<SyncStatus> status(c.peers);
    std::vector<SyncStats> stats(c.peers);
    std::vector<std::thread> threads;
    const StateSyncOptions options{.chunk_bytes = 4u << 20, .window_per_source = 8, .timeout_ms = 600'000,
                                   .sync_id = static_cast<uint64_t>(it + 1)};
    for (size_t r = 0; r < c.peers; ++r) {
      threads.emplace_back([&, r] {
        StateSyncRunner runner(*peers[r]);
        status[r] = runner.run(view, states[r], elected, options, &stats[r]);
      });
    }
    for (auto& t : threads) t.join();
    for (size_t r = 0; r < c.peers; ++r) {
      if (!status[r].is_ok()) {
        std::fprintf(stderr, "rank %zu: %s\n", r, status[r].to_string().c_str());
        return 1;
      }
    }
    const SyncStats& s = stats[c.peers - 1];
    const bool match = states[c.peers - 1].state_hash() == states[0].state_hash();
    std::printf("  run %d: downloaded %llu bytes in %.3f s = %.2f Gbit/s, %llu buffers verified, state hash %s\n", it,
                static_cast<unsigned long long>(s.bytes_downloaded), s.seconds(), s.download_gbit_per_s(),
                static_cast<unsigned long long>(s.buffers_downloaded), match ? "matches" : "DIFFERS");
    if (!match) return 1;
  }
  return 0;
}

}  // namespace

int run_allreduce_bench(int argc, char** argv) {
  const Config c = parse(argc, argv);
  if (c.state_sync) return state_sync_mode(c);
  if (c.probe && !c.rank) {
    std::vector<std::unique_ptr<TcpTransport>> peers = loopback_mesh(c);
    std::vector<int> ok(c.peers, 0);
    std::vector<std::thread> threads;
    for (size_t r = 0; r < c.peers; ++r) threads.emplace_back([&, r] { ok[r] = run_topology(*peers[r], c, r); });
    for (auto& t : threads) t.join();
    return std::all_of(ok.begin(), ok.end(), [](int v) { return v != 0; }) ? 0 : 1;
  }
  return c.rank ? process_mode(c) : threads_mode(c);
}
