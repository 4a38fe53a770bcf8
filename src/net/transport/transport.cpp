#include "net/transport/transport.h"

#include <chrono>

#include "core/assert.h"

namespace meridian::net {

int64_t SteadyClock::now_us() const {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void ManualClock::advance_to(int64_t t_us) {
  MERIDIAN_ASSERT(t_us >= now_us_, "simulated time must not go backwards: now {} us, asked {} us", now_us_, t_us);
  now_us_ = t_us;
}

const char* net_code_name(NetCode code) {
  switch (code) {
    case NetCode::kOk: return "ok";
    case NetCode::kTimeout: return "timeout";
    case NetCode::kPeerLost: return "peer_lost";
    case NetCode::kMessageTooLarge: return "message_too_large";
    case NetCode::kClosed: return "closed";
    case NetCode::kProtocol: return "protocol";
  }
  return "unknown";
}

std::string NetStatus::to_string() const {
  if (is_ok()) return "ok";
  std::string s = net_code_name(code_);
  if (peer_ != kNoPeer) s += " (peer " + std::to_string(peer_) + ")";
  if (!detail_.empty()) s += ": " + detail_;
  return s;
}

Status NetStatus::to_status() const {
  if (is_ok()) return Status::ok();
  switch (code_) {
    case NetCode::kPeerLost:
    case NetCode::kTimeout:
      return Status::error(to_string(), "the view changed under the operation; retry it under the new view");
    case NetCode::kProtocol:
      return Status::error(to_string(), "peers run incompatible versions or a peer is faulty");
    default:
      return Status::error(to_string());
  }
}

}  // namespace meridian::net
