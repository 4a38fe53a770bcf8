// Drives one operation per member (an all-reduce, a state sync, ...) over a SimNetwork: one
// thread, simulated time, faults scheduled by time or by the number of messages delivered. The
// all-reduce and state-sync harnesses share it, so a run is a pure function of (inputs, network
// config and seed, faults) for every protocol alike.
//
// An Op is a state machine with start(), on_recv(NetStatus, Message) (its return value is passed
// to on_frame), check_deadline(), done() and deadline_us(). The loop is bounded: every iteration
// delivers or consumes an event or advances time to the next event, fault or deadline, and
// deadlines are finite; a member that is done, crashed or frozen is no longer driven.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "core/assert.h"
#include "net/transport/sim_transport.h"

namespace meridian::net {

struct SimFault {
  enum class Kind { kCrash, kFreeze };
  Kind kind = Kind::kCrash;
  PeerId peer = 0;
  // The fault fires at the first moment both conditions hold.
  int64_t at_us = 0;
  uint64_t after_messages_delivered = 0;
  int64_t detect_after_us = 0;  // crash: delay before the others get kPeerLost
};

// ops[r] belongs to members[r] (null: the member did not run; it must then be stopped[r]).
// stopped[r] is set for members that were down at the start and when a fault hits them.
// transport_of(r) is the Transport the member receives on.
template <typename Op, typename TransportOf, typename OnFrame>
void drive_sim_ops(SimNetwork& network, const std::vector<PeerId>& members, std::vector<std::unique_ptr<Op>>& ops,
                   std::vector<bool>& stopped, const std::vector<SimFault>& faults, TransportOf&& transport_of,
                   OnFrame&& on_frame) {
  const size_t world = members.size();
  for (size_t r = 0; r < world; ++r) {
    if (ops[r] && !stopped[r]) ops[r]->start();
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

  for (;;) {
    apply_faults();
    bool progress = false;
    for (size_t r = 0; r < world; ++r) {
      if (stopped[r] || ops[r]->done()) continue;
      auto& transport = transport_of(r);
      while (!ops[r]->done() && !stopped[r]) {
        Message m;
        const NetStatus st = transport.recv(&m, network.now_us());
        if (st.code() == NetCode::kTimeout) break;
        progress = true;
        on_frame(r, ops[r]->on_recv(st, m));
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
}

}  // namespace meridian::net
