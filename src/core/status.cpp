#include "core/status.h"

namespace meridian {

std::string Status::to_string() const {
  if (!failed_) return "ok";
  if (hint_.empty()) return message_;
  return message_ + "\nhint: " + hint_;
}

Status Status::with_context(const std::string& context) const {
  if (!failed_) return *this;
  return Status::error(context + ": " + message_, hint_);
}

}  // namespace meridian
