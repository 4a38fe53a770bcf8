#include "net/state_sync/sim_state_sync.h"

#include <algorithm>
#include <memory>
#include <optional>

#include "core/assert.h"

namespace meridian::net {

SimStateSyncResult run_state_sync_sim(SimNetwork& network, const std::vector<PeerId>& view,
                                      const std::vector<SharedState*>& states, const ElectedHashes& elected,
                                      const StateSyncOptions& options, const std::vector<SimFault>& faults,
                                      const std::vector<Transport*>& transports) {
  const size_t world = view.size();
  MERIDIAN_ASSERT(states.size() == world, "{} states for {} members", states.size(), world);
  MERIDIAN_ASSERT(transports.empty() || transports.size() == world, "{} transports for {} members",
                  transports.size(), world);
  auto transport_of = [&](size_t r) -> Transport& {
    return transports.empty() ? network.endpoint(view[r]) : *transports[r];
  };
  SimStateSyncResult result;
  result.status.assign(world, SyncStatus::error(SyncCode::kClosed, kNoPeer, "member did not run"));
  result.stats.assign(world, SyncStats{});

  std::vector<std::unique_ptr<StateSync>> ops(world);
  std::vector<bool> stopped(world, false);  // crashed or frozen: no longer driven
  for (size_t r = 0; r < world; ++r) {
    if (!network.is_up(view[r])) {
      stopped[r] = true;
      continue;
    }
    ops[r] = std::make_unique<StateSync>(transport_of(r), view, *states[r], elected, options);
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
        if (view[r] == fault.peer) stopped[r] = true;
      }
      if (fault.kind == SimFault::Kind::kCrash) network.crash(fault.peer, fault.detect_after_us);
    }
  };

  // Bound on the loop: every iteration consumes an event or advances time to the next event,
  // fault or deadline, and deadlines are finite.
  for (;;) {
    apply_faults();
    bool progress = false;
    for (size_t r = 0; r < world; ++r) {
      if (stopped[r] || ops[r]->done()) continue;
      Transport& transport = transport_of(r);
      while (!ops[r]->done() && !stopped[r]) {
        Message m;
        const NetStatus st = transport.recv(&m, network.now_us());
        if (st.code() == NetCode::kTimeout) break;
        progress = true;
        ops[r]->on_recv(st, m);  // a foreign frame here can only be another protocol's: dropped
        apply_faults();
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
    if (ops[r]->done() && !stopped[r]) {
      result.status[r] = ops[r]->status();
      result.finished_us = std::max(result.finished_us, ops[r]->stats().elapsed_us);
    }
  }
  return result;
}

}  // namespace meridian::net
