// Fault points: the armed table and the actions; the rules are in fault.h.
#include "core/fault.h"

#include <signal.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace meridian::fault {

namespace {

enum class Action { kKill, kStop, kHang };

struct Armed {
  int64_t at = 1;  // fires at this hit
  Action action = Action::kKill;
  int64_t hits = 0;
};

std::mutex& table_mutex() {
  static std::mutex m;
  return m;
}
// Guarded by table_mutex(). A function-local static: fault points may be reached from static
// initialisers and from any thread.
std::map<std::string, Armed, std::less<>>& table() {
  static std::map<std::string, Armed, std::less<>> t;
  return t;
}

const char* action_name(Action a) {
  switch (a) {
    case Action::kKill: return "kill";
    case Action::kStop: return "stop";
    case Action::kHang: return "hang";
  }
  return "?";
}

}  // namespace

namespace detail {

std::atomic<bool> any_armed{false};

void reached(std::string_view name) {
  Action action;
  {
    std::lock_guard<std::mutex> lock(table_mutex());
    auto it = table().find(name);
    if (it == table().end()) return;
    if (++it->second.hits != it->second.at) return;
    action = it->second.action;
  }
  std::printf("meridian: fault point %.*s reached (%s)\n", static_cast<int>(name.size()), name.data(), action_name(action));
  std::fflush(stdout);
  std::fflush(stderr);
  switch (action) {
    case Action::kKill: ::raise(SIGKILL); break;
    case Action::kStop: ::raise(SIGSTOP); break;
    case Action::kHang:
      for (;;) ::pause();
  }
}

}  // namespace detail

Status arm(std::string_view spec) {
  std::vector<std::pair<std::string, Armed>> items;
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t comma = spec.find(',', start);
    std::string_view item = spec.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    start = comma == std::string_view::npos ? spec.size() + 1 : comma + 1;
    if (item.empty()) continue;
    auto bad = [&](const std::string& why) {
      return Status::error("fault spec '" + std::string(item) + "': " + why,
                           "write NAME[@N][:kill|stop|hang], e.g. checkpoint.rename@2:kill");
    };
    Armed armed;
    if (const size_t colon = item.find(':'); colon != std::string_view::npos) {
      const std::string_view a = item.substr(colon + 1);
      if (a == "kill") armed.action = Action::kKill;
      else if (a == "stop") armed.action = Action::kStop;
      else if (a == "hang") armed.action = Action::kHang;
      else return bad("unknown action '" + std::string(a) + "'");
      item = item.substr(0, colon);
    }
    if (const size_t at = item.find('@'); at != std::string_view::npos) {
      const std::string_view n = item.substr(at + 1);
      auto [end, ec] = std::from_chars(n.data(), n.data() + n.size(), armed.at);
      if (ec != std::errc() || end != n.data() + n.size() || armed.at < 1) return bad("the count after '@' must be >= 1");
      item = item.substr(0, at);
    }
    if (item.empty()) return bad("no point name");
    items.emplace_back(std::string(item), armed);
  }
  std::lock_guard<std::mutex> lock(table_mutex());
  for (auto& [name, armed] : items) table()[name] = armed;
  if (!items.empty()) detail::any_armed.store(true);
  return Status::ok();
}

Status arm_from_env() {
  const char* spec = std::getenv("MERIDIAN_FAULT");
  if (spec == nullptr) return Status::ok();
  return arm(spec).with_context("MERIDIAN_FAULT");
}

void disarm_all() {
  std::lock_guard<std::mutex> lock(table_mutex());
  table().clear();
  detail::any_armed.store(false);
}

int64_t hits(std::string_view name) {
  std::lock_guard<std::mutex> lock(table_mutex());
  auto it = table().find(name);
  return it == table().end() ? 0 : it->second.hits;
}

}  // namespace meridian::fault
