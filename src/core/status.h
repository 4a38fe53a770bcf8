// Status and Result<T>: typed results for operating failures and user errors (STYLE.md
// habit 8). A Status carries a one-line cause and an optional hint that says what to do.
// Deliberately minimal: no error codes hierarchy, no exceptions across library boundaries.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace meridian {

class Status {
 public:
  Status() = default;  // ok
  static Status ok() { return Status(); }
  static Status error(std::string message, std::string hint = {}) {
    Status s;
    s.failed_ = true;
    s.message_ = std::move(message);
    s.hint_ = std::move(hint);
    return s;
  }

  bool is_ok() const { return !failed_; }
  explicit operator bool() const { return !failed_; }
  const std::string& message() const { return message_; }
  const std::string& hint() const { return hint_; }
  // "cause" or "cause\nhint: what to do".
  std::string to_string() const;
  // Prefixes the message with context, e.g. the file name.
  Status with_context(const std::string& context) const;

 private:
  bool failed_ = false;
  std::string message_;
  std::string hint_;
};

template <typename T>
class Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : value_(std::move(status)) {}  // NOLINT

  bool is_ok() const { return std::holds_alternative<T>(value_); }
  explicit operator bool() const { return is_ok(); }
  const Status& status() const {
    static const Status kOk;
    return is_ok() ? kOk : std::get<Status>(value_);
  }
  T& value() & { return std::get<T>(value_); }
  const T& value() const& { return std::get<T>(value_); }
  T&& value() && { return std::get<T>(std::move(value_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() { return value(); }

 private:
  std::variant<T, Status> value_;
};

// Thrown only at the application boundary (CLI), never inside libraries' hot paths.
struct UserError {
  Status status;
};

}  // namespace meridian

#define MERIDIAN_RETURN_IF_ERROR(expr)            \
  do {                                            \
    ::meridian::Status _st = (expr);              \
    if (!_st.is_ok()) return _st;                 \
  } while (0)
