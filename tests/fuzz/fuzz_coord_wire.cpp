// Fuzz target: the control protocol's decoders (src/net/membership/wire.h) on arbitrary bytes.
// The input is a byte stream as a connection would carry it: FrameReader splits it, every
// payload goes through decode_message, and the acceptor's side of the handshake eats it too.
// A decoded message must re-encode to exactly the same payload (no field silently dropped or
// widened), with every length within its documented bound; a refusal must be one line.
// Seed corpus: tests/fuzz/corpus/coord_wire (frames of each message type).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/assert.h"
#include "net/membership/wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace meridian::net::membership;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  FrameReader reader(1u << 16);
  reader.feed(bytes);
  ServerHandshake handshake("fuzz-token");
  std::vector<std::byte> payload;
  while (reader.next(&payload)) {
    MERIDIAN_ASSERT(payload.size() <= (1u << 16), "payload of {} bytes passed the limit", payload.size());
    handshake.on_payload(payload);
    meridian::Result<ControlMessage> m = decode_message(payload);
    if (!m) {
      MERIDIAN_ASSERT(m.status().message().find('\n') == std::string::npos, "error not one line: {}", m.status().message());
      continue;
    }
    if (const auto* h = std::get_if<Hello>(&*m); h != nullptr && h->version != kProtocolVersion) continue;  // decoded only up to its version
    const std::vector<std::byte> again = encode_message(*m);
    MERIDIAN_ASSERT(again.size() == payload.size() && std::equal(again.begin(), again.end(), payload.begin()),
                    "{} does not round-trip ({} vs {} bytes)", message_name(*m), again.size(), payload.size());
  }
  if (reader.failed()) MERIDIAN_ASSERT(!reader.error().empty(), "failed without a reason");
  return 0;
}
