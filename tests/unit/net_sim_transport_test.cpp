// The simulated network: delivery times, deadlines on the simulated clock, bandwidth, crash
// notices, size limits and deterministic replay.
#include <gtest/gtest.h>

#include <vector>

#include "net/transport/sim_transport.h"

namespace meridian::net {
namespace {

std::vector<std::byte> bytes_of(size_t n, uint8_t fill) { return std::vector<std::byte>(n, std::byte{fill}); }

TEST(net_SimTransport, DeliversAfterLatencyAndTimesOutBefore) {
  SimNetwork net({.peers = 2, .latency_us = 500});
  ASSERT_TRUE(net.endpoint(0).send(1, bytes_of(10, 7)).is_ok());
  Message m;
  // Polling at now: nothing yet, and the clock does not move.
  NetStatus st = net.endpoint(1).recv(&m, net.now_us());
  EXPECT_EQ(st.code(), NetCode::kTimeout);
  EXPECT_EQ(net.now_us(), 0);
  // A deadline before the delivery: timeout exactly at the deadline.
  st = net.endpoint(1).recv(&m, 200);
  EXPECT_EQ(st.code(), NetCode::kTimeout);
  EXPECT_EQ(net.now_us(), 200);
  // A later deadline: the message, at its delivery time.
  st = net.endpoint(1).recv(&m, 10'000);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  EXPECT_EQ(net.now_us(), 500);
  EXPECT_EQ(m.peer, 0u);
  EXPECT_EQ(m.bytes, bytes_of(10, 7));
  EXPECT_EQ(net.endpoint(0).bytes_sent_total(), 10u);
  EXPECT_EQ(net.endpoint(1).bytes_recv_total(), 10u);
}

TEST(net_SimTransport, BandwidthSerialisesALink) {
  // 1 byte/us: two 1000-byte messages leave at 1000 us and 2000 us, arrive 100 us later.
  SimNetwork net({.peers = 2, .latency_us = 100, .bandwidth_bytes_per_us = 1.0});
  ASSERT_TRUE(net.endpoint(0).send(1, bytes_of(1000, 1)).is_ok());
  ASSERT_TRUE(net.endpoint(0).send(1, bytes_of(1000, 2)).is_ok());
  Message m;
  ASSERT_TRUE(net.endpoint(1).recv(&m, 1'000'000).is_ok());
  EXPECT_EQ(net.now_us(), 1100);
  ASSERT_TRUE(net.endpoint(1).recv(&m, 1'000'000).is_ok());
  EXPECT_EQ(net.now_us(), 2100);
  EXPECT_EQ(m.bytes[0], std::byte{2});
}

TEST(net_SimTransport, RejectsOversizedMessages) {
  SimNetwork net({.peers = 2, .max_message_bytes = 100});
  const NetStatus st = net.endpoint(0).send(1, bytes_of(101, 0));
  EXPECT_EQ(st.code(), NetCode::kMessageTooLarge);
  EXPECT_EQ(st.peer(), 1u);
  EXPECT_TRUE(net.endpoint(0).send(1, bytes_of(100, 0)).is_ok());
}

TEST(net_SimTransport, CrashIsReportedOnceAfterDetectionDelay) {
  SimNetwork net({.peers = 3, .latency_us = 100});
  ASSERT_TRUE(net.endpoint(2).send(0, bytes_of(5, 1)).is_ok());  // in flight when 2 dies: dropped
  net.crash(2, 3000);
  Message m;
  NetStatus st = net.endpoint(0).recv(&m, 1'000'000);
  EXPECT_EQ(st.code(), NetCode::kPeerLost);
  EXPECT_EQ(st.peer(), 2u);
  EXPECT_EQ(net.now_us(), 3000);
  st = net.endpoint(1).recv(&m, net.now_us());
  EXPECT_EQ(st.code(), NetCode::kPeerLost);
  // Reported once; afterwards sends to it fail at once, and the dead endpoint is closed.
  EXPECT_EQ(net.endpoint(0).recv(&m, net.now_us()).code(), NetCode::kTimeout);
  EXPECT_EQ(net.endpoint(0).send(2, bytes_of(1, 0)).code(), NetCode::kPeerLost);
  EXPECT_EQ(net.endpoint(2).send(0, bytes_of(1, 0)).code(), NetCode::kClosed);
  EXPECT_EQ(net.endpoint(2).recv(&m, net.now_us()).code(), NetCode::kClosed);
  EXPECT_GE(net.messages_dropped(), 1u);
}

TEST(net_SimTransport, SameSeedSameDeliveryOrder) {
  auto trace = [](uint64_t seed) {
    SimNetwork net({.peers = 4, .latency_us = 100, .jitter_us = 1000, .seed = seed});
    for (uint8_t i = 0; i < 50; ++i) {
      EXPECT_TRUE(net.endpoint(i % 3).send(3, bytes_of(1, i)).is_ok());
    }
    std::vector<std::pair<int64_t, uint8_t>> order;
    Message m;
    while (net.endpoint(3).recv(&m, 1'000'000).is_ok()) order.emplace_back(net.now_us(), uint8_t(m.bytes[0]));
    return order;
  };
  const auto a = trace(5), b = trace(5), c = trace(6);
  EXPECT_EQ(a.size(), 50u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

}  // namespace
}  // namespace meridian::net
