// All-reduce on the simulated network: the world x count x codec matrix against a float64
// reference, bit-identity across peers, bytes per peer, int8 error flat in N, and failures
// (crash, freeze, garbage frame) leaving buffers unchanged, then a retry under the new view.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <tuple>
#include <vector>

#include "core/hash.h"
#include "net/collective/sim_all_reduce.h"

namespace meridian::net {
namespace {

using Buffers = std::vector<std::vector<float>>;

// Peer r's input: uniform in [-a_r, a_r] with a_r in {1, 2, 3}, and some exact zeros.
Buffers make_inputs(size_t world, size_t count, uint64_t seed) {
  Buffers in(world, std::vector<float>(count));
  for (size_t r = 0; r < world; ++r) {
    SplitMix64 rng(seed * 1000003 + r);
    const double a = 1.0 + static_cast<double>(r % 3);
    for (float& x : in[r]) x = rng.below(16) == 0 ? 0.0f : static_cast<float>((rng.uniform() * 2 - 1) * a);
  }
  return in;
}

std::vector<std::span<float>> spans_of(Buffers& b) {
  std::vector<std::span<float>> s;
  for (auto& v : b) s.emplace_back(v);
  return s;
}

std::vector<PeerId> ranks(size_t world) {
  std::vector<PeerId> m(world);
  for (size_t r = 0; r < world; ++r) m[r] = static_cast<PeerId>(r);
  return m;
}

bool bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), 4 * a.size()) == 0);
}

// Encoded payload bytes peer `rank` must send, from the layout in all_reduce.h (shard j =
// [j*count/N, (j+1)*count/N), pieces of chunk_values): its contributions to every other
// owner plus its reduced shard to every other peer.
uint64_t expected_payload_sent(size_t world, size_t count, size_t rank, Codec codec, size_t chunk_values) {
  auto shard_bytes = [&](size_t j) {
    const size_t begin = j * count / world, end = (j + 1) * count / world;
    uint64_t bytes = 0;
    for (size_t b = begin; b < end; b += chunk_values) bytes += encoded_size(codec, std::min(chunk_values, end - b));
    return bytes;
  };
  uint64_t sent = 0;
  for (size_t j = 0; j < world; ++j) {
    if (j != rank) sent += shard_bytes(j);
  }
  return sent + (world - 1) * shard_bytes(rank);
}

struct ErrorReport {
  double max_abs = 0;
  double rms = 0;
  double max_over_tolerance = 0;  // <= 1 means within tolerance everywhere
};

// Tolerance per value: a codec with unit roundoff u rounds each contribution (|err| <= u |x|)
// and the result (|err| <= u |result|); int8 rounds to half a block step, bounded here with
// the peer's global max (a block's max is never larger). fp32 accumulation adds N roundings.
ErrorReport check_against_reference(const Buffers& in, const std::vector<float>& out, Codec codec, ReduceOp op) {
  const size_t world = in.size(), count = out.size();
  const double n = static_cast<double>(world);
  const double div = op == ReduceOp::kMean ? n : 1.0;
  std::vector<double> amax(world, 0.0);
  for (size_t r = 0; r < world; ++r) {
    for (float x : in[r]) amax[r] = std::max(amax[r], std::fabs(static_cast<double>(x)));
  }
  double ref_amax = 0;
  std::vector<double> ref(count, 0.0), abs_sum(count, 0.0);
  for (size_t i = 0; i < count; ++i) {
    for (size_t r = 0; r < world; ++r) {
      ref[i] += in[r][i];
      abs_sum[i] += std::fabs(in[r][i]);
    }
    ref[i] /= div;
    ref_amax = std::max(ref_amax, std::fabs(ref[i]));
  }
  double u = 0, tiny = 0;
  switch (codec) {
    case Codec::kFp32: u = 0; break;
    case Codec::kBf16: u = 0x1.0p-8; break;
    case Codec::kFp16: u = 0x1.0p-11; tiny = 0x1.0p-25; break;
    default: break;
  }
  ErrorReport rep;
  double sq = 0;
  for (size_t i = 0; i < count; ++i) {
    const double accumulate = (n + 1) * 0x1.0p-24 * abs_sum[i] / div;
    double tol;
    if (codec == Codec::kInt8) {
      double contrib = 0;
      for (size_t r = 0; r < world; ++r) contrib += amax[r] / 254.0;
      contrib /= div;
      tol = contrib + (ref_amax + contrib) / 254.0 + accumulate;
    } else {
      const double contrib = (u * abs_sum[i] + n * tiny) / div;
      tol = contrib + u * (std::fabs(ref[i]) + contrib + accumulate) + tiny + accumulate;
    }
    tol = tol * (1 + 1e-6) + 1e-30;
    const double err = std::fabs(static_cast<double>(out[i]) - ref[i]);
    rep.max_abs = std::max(rep.max_abs, err);
    rep.max_over_tolerance = std::max(rep.max_over_tolerance, err / tol);
    sq += err * err;
  }
  rep.rms = count ? std::sqrt(sq / count) : 0;
  return rep;
}

// ---- the matrix ------------------------------------------------------------------------------

using MatrixParam = std::tuple<size_t, size_t, Codec>;

class net_AllReduceMatrix : public ::testing::TestWithParam<MatrixParam> {};

TEST_P(net_AllReduceMatrix, MatchesReferenceBitIdenticalAndSendsTwoNMinusOneOverN) {
  const auto [world, count, codec] = GetParam();
  // Sum for odd worlds, mean for even ones: both ops are covered across the matrix.
  const ReduceOp op = world % 2 ? ReduceOp::kSum : ReduceOp::kMean;
  const size_t chunk_values = 1u << 15;  // several pieces per shard for the big buffers
  Buffers in = make_inputs(world, count, world * 131 + count);
  Buffers buf = in;
  SimNetwork net({.peers = world, .latency_us = 2000, .jitter_us = 500, .seed = count + world});
  AllReduceOptions options{.codec = codec, .op = op, .chunk_values = chunk_values, .timeout_ms = 10'000, .op_id = 1};
  const SimAllReduceResult res = run_all_reduce_sim(net, ranks(world), spans_of(buf), options);

  for (size_t r = 0; r < world; ++r) ASSERT_TRUE(res.status[r].is_ok()) << "rank " << r << ": " << res.status[r].to_string();
  for (size_t r = 1; r < world; ++r) ASSERT_TRUE(bit_identical(buf[0], buf[r])) << "rank " << r << " differs from rank 0";

  const ErrorReport err = check_against_reference(in, buf[0], codec, op);
  EXPECT_LE(err.max_over_tolerance, 1.0) << "max abs error " << err.max_abs;

  const double ideal = 2.0 * (world - 1) / world * encoded_size(codec, count);
  uint64_t sent_sum = 0, recv_sum = 0;
  for (size_t r = 0; r < world; ++r) {
    const AllReduceStats& s = res.stats[r];
    EXPECT_EQ(s.payload_bytes_sent, expected_payload_sent(world, count, r, codec, chunk_values)) << "rank " << r;
    // Against 2(N-1)/N x payload: shards differ by at most one value (4 bytes), and int8 pays
    // up to one extra block scale per piece it sends.
    const double pieces_sent = 2.0 * (world - 1) * ((count / world + chunk_values) / chunk_values);
    const double slack = 4.0 * world + (codec == Codec::kInt8 ? 4.0 * pieces_sent : 0.0);
    EXPECT_LE(std::fabs(static_cast<double>(s.payload_bytes_sent) - ideal), slack) << "rank " << r;
    sent_sum += s.bytes_sent_total;
    recv_sum += s.bytes_recv_total;
  }
  EXPECT_EQ(sent_sum, recv_sum);
}

std::string matrix_name(const ::testing::TestParamInfo<MatrixParam>& info) {
  const auto [world, count, codec] = info.param;
  return "world" + std::to_string(world) + "_count" + std::to_string(count) + "_" + std::string(codec_name(codec));
}

INSTANTIATE_TEST_SUITE_P(Matrix, net_AllReduceMatrix,
                         ::testing::Combine(::testing::Values<size_t>(1, 2, 3, 5, 8, 16),
                                            ::testing::Values<size_t>(0, 1, 7, 1000, 1u << 20),
                                            ::testing::Values(Codec::kFp32, Codec::kBf16, Codec::kFp16, Codec::kInt8)),
                         matrix_name);

// ---- int8 error does not grow with N -----------------------------------------------------------

// The design we avoid, for contrast: a ring reduce-scatter that re-quantizes the running
// partial sum at every hop (as PCCL does), then an all-gather of the int8 result. A value is
// rounded N times instead of twice. Computed locally: only the rounding matters here.
std::vector<float> ring_requantizing_mean(const Buffers& in) {
  const size_t world = in.size(), count = in[0].size();
  std::vector<uint32_t> storage(encoded_size(Codec::kInt8, count) / 4 + 2);
  std::span<std::byte> wire(reinterpret_cast<std::byte*>(storage.data()), encoded_size(Codec::kInt8, count));
  std::vector<float> partial = in[0];
  for (size_t hop = 1; hop < world; ++hop) {
    encode(Codec::kInt8, partial, wire);  // sent to the next peer, which adds its own values
    decode(Codec::kInt8, wire, partial);
    for (size_t i = 0; i < count; ++i) partial[i] += in[hop][i];
  }
  for (float& v : partial) v /= static_cast<float>(world);
  encode(Codec::kInt8, partial, wire);  // all-gather of the reduced values
  decode(Codec::kInt8, wire, partial);
  return partial;
}

// Pseudo-gradient-like inputs: a signal shared by all peers plus each peer's own noise. The
// error is measured in units of the input quantization step (max |x| / 127).
TEST(net_AllReduce, Int8ErrorFlatInWorldSizeAndWithinOneStep) {
  const size_t count = 1u << 16;
  std::vector<double> rms_steps, ring_rms_steps;
  for (size_t world : {2u, 4u, 8u, 16u}) {
    Buffers in(world, std::vector<float>(count));
    SplitMix64 signal_rng(99);
    std::vector<double> signal(count);
    for (double& s : signal) s = signal_rng.uniform() * 2 - 1;
    double amax = 0;
    for (size_t r = 0; r < world; ++r) {
      SplitMix64 rng(1000 + r);
      for (size_t i = 0; i < count; ++i) {
        in[r][i] = static_cast<float>(signal[i] + 0.5 * (rng.uniform() * 2 - 1));
        amax = std::max(amax, std::fabs(static_cast<double>(in[r][i])));
      }
    }
    Buffers buf = in;
    SimNetwork net({.peers = world, .latency_us = 1000});
    const SimAllReduceResult res =
        run_all_reduce_sim(net, ranks(world), spans_of(buf), {.codec = Codec::kInt8, .op = ReduceOp::kMean, .op_id = 7});
    for (size_t r = 0; r < world; ++r) ASSERT_TRUE(res.status[r].is_ok()) << res.status[r].to_string();
    const ErrorReport err = check_against_reference(in, buf[0], Codec::kInt8, ReduceOp::kMean);
    const double step = amax / 127.0;
    const ErrorReport ring = check_against_reference(in, ring_requantizing_mean(in), Codec::kInt8, ReduceOp::kMean);
    std::printf("int8 mean, N=%2zu: max error %.3f steps, rms %.3f steps | ring re-quantizing: max %.3f, rms %.3f\n",
                world, err.max_abs / step, err.rms / step, ring.max_abs / step, ring.rms / step);
    EXPECT_LE(err.max_abs, step) << "N=" << world;
    rms_steps.push_back(err.rms / step);
    ring_rms_steps.push_back(ring.rms / step);
  }
  for (size_t i = 1; i < rms_steps.size(); ++i) EXPECT_LE(rms_steps[i], rms_steps[0] * 1.1) << "error grew with N";
  // The contrast: re-quantizing at every hop grows with N and ends well above ours.
  EXPECT_GT(ring_rms_steps.back(), ring_rms_steps.front() * 1.5);
  EXPECT_GT(ring_rms_steps.back(), rms_steps.back() * 1.5);
}

// ---- arrival order does not change the result -------------------------------------------------

TEST(net_AllReduce, ResultIndependentOfArrivalOrder) {
  const size_t world = 6, count = 10'000;
  const Buffers in = make_inputs(world, count, 5);
  Hash128 first{};
  for (uint64_t seed = 1; seed <= 8; ++seed) {
    Buffers buf = in;
    // Very different timings per seed: jitter up to 50x the latency reorders everything.
    SimNetwork net({.peers = world, .latency_us = 100, .jitter_us = 5000, .seed = seed});
    const SimAllReduceResult res = run_all_reduce_sim(
        net, ranks(world), spans_of(buf), {.codec = Codec::kBf16, .op = ReduceOp::kMean, .chunk_values = 500, .op_id = 3});
    for (size_t r = 0; r < world; ++r) ASSERT_TRUE(res.status[r].is_ok());
    const Hash128 h = xxh3_128(buf[0].data(), 4 * count);
    if (seed == 1) first = h;
    EXPECT_EQ(h, first) << "seed " << seed;
  }
}

// The send window only decides when contributions leave, never what is computed: with no
// window, the smallest (two pieces in flight per owner) and the default, on bandwidth-limited
// links, every member ends with the same bits, and the bytes sent stay 2(N-1)/N of the payload.
TEST(net_AllReduce, SendWindowChangesTimingNotResults) {
  const size_t world = 5, count = 40'000;
  const Buffers in = make_inputs(world, count, 11);
  Hash128 first{};
  uint64_t first_bytes = 0;
  const std::vector<size_t> windows = {0, 1, 256u << 10};
  for (size_t w = 0; w < windows.size(); ++w) {
    Buffers buf = in;
    SimNetwork net({.peers = world, .latency_us = 500, .jitter_us = 200, .bandwidth_bytes_per_us = 10.0, .seed = 9});
    AllReduceOptions options{.codec = Codec::kInt8, .op = ReduceOp::kMean, .chunk_values = 1000, .op_id = 5};
    options.window_bytes = windows[w];
    const SimAllReduceResult res = run_all_reduce_sim(net, ranks(world), spans_of(buf), options);
    for (size_t r = 0; r < world; ++r) ASSERT_TRUE(res.status[r].is_ok()) << "window " << windows[w] << ": " << res.status[r].to_string();
    for (size_t r = 1; r < world; ++r) ASSERT_EQ(0, std::memcmp(buf[0].data(), buf[r].data(), 4 * count)) << "rank " << r;
    const Hash128 h = xxh3_128(buf[0].data(), 4 * count);
    if (w == 0) {
      first = h;
      first_bytes = res.stats[0].bytes_sent_total;
    }
    EXPECT_EQ(h, first) << "window " << windows[w];
    EXPECT_EQ(res.stats[0].bytes_sent_total, first_bytes) << "window " << windows[w];
  }
}

// ---- failures ---------------------------------------------------------------------------------

TEST(net_AllReduce, CrashedPeerFailsOthersWithBuffersUnchangedThenRetrySucceeds) {
  const size_t world = 5, count = 20'000;
  const Buffers in = make_inputs(world, count, 17);
  Buffers buf = in;
  SimNetwork net({.peers = world, .latency_us = 1000, .jitter_us = 300, .seed = 4});
  const int64_t detect_us = 50'000;
  AllReduceOptions options{.codec = Codec::kInt8, .op = ReduceOp::kMean, .chunk_values = 1000, .timeout_ms = 10'000, .op_id = 10};
  const SimAllReduceResult res = run_all_reduce_sim(
      net, ranks(world), spans_of(buf), options,
      {SimFault{.kind = SimFault::Kind::kCrash, .peer = 2, .after_messages_delivered = 30, .detect_after_us = detect_us}});
  for (size_t r = 0; r < world; ++r) {
    if (r == 2) continue;
    EXPECT_EQ(res.status[r].code(), NetCode::kPeerLost) << "rank " << r << ": " << res.status[r].to_string();
    EXPECT_EQ(res.status[r].peer(), 2u);
    EXPECT_TRUE(bit_identical(buf[r], in[r])) << "rank " << r << " buffer changed by a failed all-reduce";
    EXPECT_LE(res.stats[r].elapsed_us, detect_us + 10'000) << "failure not reported within the detection bound";
  }

  // Retry under the new view {0, 1, 3, 4}; stale frames of op 10 still in flight are ignored.
  const std::vector<PeerId> view = {0, 1, 3, 4};
  Buffers in2 = {in[0], in[1], in[3], in[4]};
  Buffers buf2 = in2;
  options.op_id = 11;
  const SimAllReduceResult retry = run_all_reduce_sim(net, view, spans_of(buf2), options);
  for (size_t r = 0; r < view.size(); ++r) ASSERT_TRUE(retry.status[r].is_ok()) << retry.status[r].to_string();
  for (size_t r = 1; r < view.size(); ++r) EXPECT_TRUE(bit_identical(buf2[0], buf2[r]));
  EXPECT_LE(check_against_reference(in2, buf2[0], Codec::kInt8, ReduceOp::kMean).max_over_tolerance, 1.0);
}

TEST(net_AllReduce, FrozenPeerMakesOthersTimeOutWithBuffersUnchanged) {
  const size_t world = 4, count = 5000;
  const Buffers in = make_inputs(world, count, 23);
  Buffers buf = in;
  SimNetwork net({.peers = world, .latency_us = 1000});
  const int64_t timeout_ms = 300;
  const SimAllReduceResult res = run_all_reduce_sim(
      net, ranks(world), spans_of(buf),
      {.codec = Codec::kFp16, .op = ReduceOp::kSum, .chunk_values = 500, .timeout_ms = timeout_ms, .op_id = 1},
      {SimFault{.kind = SimFault::Kind::kFreeze, .peer = 3, .after_messages_delivered = 5}});
  for (size_t r = 0; r < 3; ++r) {
    EXPECT_EQ(res.status[r].code(), NetCode::kTimeout) << res.status[r].to_string();
    EXPECT_TRUE(bit_identical(buf[r], in[r]));
    EXPECT_EQ(res.stats[r].elapsed_us, timeout_ms * 1000);  // exactly at the deadline, never later
  }
}

TEST(net_AllReduce, WrongVersionFrameIsAProtocolErrorAndChangesNothing) {
  const size_t world = 3, count = 100;
  const Buffers in = make_inputs(world, count, 29);
  Buffers buf = in;
  SimNetwork net({.peers = world, .latency_us = 10});
  // A frame that claims to belong to op 1 but speaks wire version 99, from peer 1 to peer 0.
  std::vector<std::byte> bad(kAllReduceHeaderBytes, std::byte{0});
  const uint32_t magic = kAllReduceMagic;
  const uint16_t version = 99;
  const uint64_t op_id = 1;
  std::memcpy(bad.data(), &magic, 4);
  std::memcpy(bad.data() + 4, &version, 2);
  std::memcpy(bad.data() + 8, &op_id, 8);
  ASSERT_TRUE(net.endpoint(1).send(0, bad).is_ok());
  const SimAllReduceResult res = run_all_reduce_sim(
      net, ranks(world), spans_of(buf), {.codec = Codec::kFp32, .op = ReduceOp::kSum, .timeout_ms = 100, .op_id = 1});
  EXPECT_EQ(res.status[0].code(), NetCode::kProtocol) << res.status[0].to_string();
  EXPECT_NE(res.status[0].detail().find("version 99"), std::string::npos) << res.status[0].detail();
  for (size_t r = 0; r < world; ++r) {
    EXPECT_FALSE(res.status[r].is_ok());
    EXPECT_TRUE(bit_identical(buf[r], in[r]));
  }
}

// ---- the blocking driver ----------------------------------------------------------------------

TEST(net_AllReduce, RunnerOnOneMemberAppliesTheCodecRoundTripOnly) {
  SimNetwork net({.peers = 1});
  std::vector<float> v = {1.0f, -0.3f, 1e-3f, 0.0f};
  const std::vector<float> orig = v;
  AllReduceRunner runner(net.endpoint(0));
  AllReduceStats stats;
  const NetStatus st = runner.run({0}, v, {.codec = Codec::kBf16, .op = ReduceOp::kMean, .op_id = 1}, &stats);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(v[i], bf16_to_fp32(fp32_to_bf16(orig[i])));
  EXPECT_EQ(stats.bytes_sent_total, 0u);
}

}  // namespace
}  // namespace meridian::net
