// Fuzz target for config parsing: arbitrary bytes as a TOML document, then as `--set` lines.
// Any input must yield a Config or an error Status; never a crash, hang or exception.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "config/config.h"
#include "core/assert.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  meridian::Config config;
  meridian::Status st = meridian::apply_toml(config, text, "fuzz.toml");
  if (st.is_ok()) {
    (void)meridian::validate(config);
    // The canonical form of anything accepted must read back to the same canonical form.
    meridian::Config back;
    const std::string printed = meridian::to_toml(config);
    const meridian::Status again = meridian::apply_toml(back, printed, "printed");
    MERIDIAN_ASSERT(again.is_ok(), "printed config does not parse: {}\n{}", again.message(), printed);
    MERIDIAN_ASSERT(meridian::to_toml(back) == printed, "printed config does not read back identically");
  } else {
    MERIDIAN_ASSERT(st.message().rfind("fuzz.toml", 0) == 0, "error does not name the file: {}", st.message());
    MERIDIAN_ASSERT(!st.hint().empty(), "error without a hint: {}", st.message());
  }
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t i = 0; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == '\n') {
      lines.push_back(text.substr(start, i - start));
      start = i + 1;
    }
  }
  meridian::Config overridden;
  (void)meridian::apply_overrides(overridden, lines);
  return 0;
}
