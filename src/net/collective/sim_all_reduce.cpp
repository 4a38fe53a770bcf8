#include "net/collective/sim_all_reduce.h"

#include <algorithm>
#include <memory>

#include "core/assert.h"

namespace meridian::net {

SimAllReduceResult run_all_reduce_sim(SimNetwork& network, const std::vector<PeerId>& members,
                                      const std::vector<std::span<float>>& buffers, const AllReduceOptions& options,
                                      const std::vector<SimFault>& faults) {
  const size_t world = members.size();
  MERIDIAN_ASSERT(buffers.size() == world, "{} buffers for {} members", buffers.size(), world);
  SimAllReduceResult result;
  result.status.assign(world, NetStatus::error(NetCode::kClosed, kNoPeer, "member did not run"));
  result.stats.assign(world, AllReduceStats{});

  std::vector<std::unique_ptr<AllReduce>> ops(world);
  std::vector<bool> stopped(world, false);  // crashed or frozen: no longer driven
  for (size_t r = 0; r < world; ++r) {
    if (!network.is_up(members[r])) {
      stopped[r] = true;
      continue;
    }
    ops[r] = std::make_unique<AllReduce>(network.endpoint(members[r]), members, buffers[r], options);
  }
  for (size_t r = 0; r < world; ++r) {
    if (ops[r]) ops[r]->start();
  }

  std::vector<bool> fired(faults.size(), false);
  auto apply_faults = [&]() {
    for (size_t f = 0; f < faults.size(); ++f) {
      const SimFault& fault = faults[f];
      if (fired[f] || network.now_us() < fault.at_us || network.messages_delivered() < fault.after_messages_delivered) {
        continue;
      }
      fired[f] = true;
      for (size_t r = 0; r < world; ++r) {
        if (members[r] == fault.peer) stopped[r] = true;
      }
      if (fault.kind == SimFault::Kind::kCrash) network.crash(fault.peer, fault.detect_after_us);
    }
  };

  // Bound on the loop: every iteration either delivers/consumes an event or advances time to
  // the next event or deadline, and deadlines are finite.
  for (;;) {
    apply_faults();
    bool progress = false;
    for (size_t r = 0; r < world; ++r) {
      if (stopped[r] || ops[r]->done()) continue;
      SimTransport& endpoint = network.endpoint(members[r]);
      while (!ops[r]->done() && !stopped[r]) {
        Message m;
        const NetStatus st = endpoint.recv(&m, network.now_us());
        if (st.code() == NetCode::kTimeout) break;
        progress = true;
        if (ops[r]->on_recv(st, m) == AllReduce::Disposition::kForeign) ++result.foreign_frames;
        apply_faults();  // message-count faults fire between deliveries
      }
      if (!stopped[r]) ops[r]->check_deadline();
    }
    bool all_done = true;
    std::optional<int64_t> next = network.next_event_us();
    for (size_t r = 0; r < world; ++r) {
      if (stopped[r] || ops[r]->done()) continue;
      all_done = false;
      next = next ? std::min(*next, ops[r]->deadline_us()) : ops[r]->deadline_us();
    }
    if (all_done) break;
    if (progress) continue;
    for (size_t f = 0; f < faults.size(); ++f) {
      if (!fired[f] && faults[f].at_us > network.now_us()) next = next ? std::min(*next, faults[f].at_us) : faults[f].at_us;
    }
    MERIDIAN_ASSERT(next.has_value() && *next > network.now_us(), "simulation stuck at {} us", network.now_us());
    network.advance_to(*next);
  }

  for (size_t r = 0; r < world; ++r) {
    if (!ops[r]) continue;
    result.stats[r] = ops[r]->stats();
    if (ops[r]->done()) {
      result.status[r] = ops[r]->status();
      result.finished_us = std::max(result.finished_us, ops[r]->stats().elapsed_us);
    }
  }
  return result;
}

}  // namespace meridian::net
