// Always-on assertions for programming errors (STYLE.md habit 8). They print the failed
// condition with the values involved and abort; they are not for operating failures or user
// errors, which travel as Status/Result.
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>

namespace meridian::detail {
[[noreturn]] inline void assert_fail(const char* cond, const char* file, int line, const std::string& msg) {
  std::fprintf(stderr, "MERIDIAN_ASSERT failed: %s at %s:%d %s\n", cond, file, line, msg.c_str());
  std::fflush(stderr);
  std::abort();
}
}  // namespace meridian::detail

#define MERIDIAN_ASSERT(cond, ...)                                                           \
  do {                                                                                       \
    if (!(cond)) ::meridian::detail::assert_fail(#cond, __FILE__, __LINE__,                  \
                                                 ::fmt::format("" __VA_ARGS__));             \
  } while (0)
