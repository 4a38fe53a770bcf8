// Fuzz target: the coordinator's state machine (src/coord/coordinator_state.h) driven by
// arbitrary, but well-formed, event sequences. Input: records { u8 conn (low 3 bits) | kind
// (high bits), then for a message a u16 length and that many payload bytes }, where kind picks
// a message, a disconnect, or a clock step + tick. Payloads that do not decode are skipped, as
// the daemon closes such connections. The state machine's always-on consistency asserts (view
// members = member records) and this target's checks (epochs never decrease, one final value
// per operation, one election per shared-state sync) must hold whatever the order of events.
// Seed corpus: tests/fuzz/corpus/coord_state.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>

#include "coord/coordinator_state.h"
#include "core/assert.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace meridian::coord;
  namespace w = meridian::net::membership;
  CoordinatorConfig config;
  config.heartbeat_timeout_us = 1000;
  config.heartbeat_interval_us = 250;
  CoordinatorState state(config);
  int64_t now = 0;
  uint64_t last_epoch = 0;
  std::map<std::pair<uint64_t, uint64_t>, bool> finals;
  std::map<std::pair<uint64_t, uint64_t>, w::M2C_SyncElected> elections;
  size_t pos = 0;
  while (pos < size) {
    const uint8_t head = data[pos++];
    const ConnId conn = 1 + (head & 7);
    const uint8_t kind = head >> 3;
    std::vector<Action> actions;
    if (kind < 24) {  // a message
      if (pos + 2 > size) break;
      uint16_t len = 0;
      std::memcpy(&len, data + pos, 2);
      pos += 2;
      if (len > size - pos) break;
      meridian::Result<w::ControlMessage> m =
          w::decode_message(std::span<const std::byte>(reinterpret_cast<const std::byte*>(data + pos), len));
      pos += len;
      if (!m) continue;
      actions = state.handle(EvMessage{conn, *m}, now);
    } else if (kind < 28) {
      actions = state.handle(EvDisconnected{conn, "fuzz"}, now);
    } else {
      now += (head & 7) * 200;
      actions = state.handle(EvTick{}, now);
    }
    MERIDIAN_ASSERT(state.view().epoch >= last_epoch, "epoch went back from {} to {}", last_epoch, state.view().epoch);
    last_epoch = state.view().epoch;
    for (const Action& a : actions) {
      if (a.kind != Action::Kind::kSend) continue;
      if (const auto* f = std::get_if<w::M2C_OpFinal>(&a.message)) {
        auto [it, fresh] = finals.emplace(std::make_pair(f->epoch, f->op_id), f->ok);
        MERIDIAN_ASSERT(fresh || it->second == f->ok, "two final values for op {}/{}", f->epoch, f->op_id);
      }
      if (const auto* e = std::get_if<w::M2C_SyncElected>(&a.message)) {  // one election per sync
        auto [it, fresh] = elections.emplace(std::make_pair(e->epoch, e->op_id), *e);
        MERIDIAN_ASSERT(fresh || it->second == *e, "two elections for sync {}/{}", e->epoch, e->op_id);
      }
    }
  }
  return 0;
}
