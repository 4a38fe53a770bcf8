// PCRE2 wrapper for pre-tokenization and the UTF-8 validator that guards it. See regex.h.
//
// Thread safety: a compiled pcre2_code is read-only and shared; the match data, match context and
// JIT stack are per thread (thread_local, created on first use, freed at thread exit), so one
// Regex serves every tokenizing thread without locks.
// Cost: one pcre2_jit_match call per piece; the JIT stack is bounded (1 MiB per thread), which the
// Llama-3 pattern (no nested quantifiers) never approaches.
#include "data/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <utility>

#include "core/assert.h"

namespace meridian::data {

size_t utf8_valid_prefix(const uint8_t* data, size_t size) {
  size_t i = 0;
  while (i < size) {
    const uint8_t b0 = data[i];
    if (b0 < 0x80) {
      ++i;
      continue;
    }
    // Second-byte range depends on the lead byte (RFC 3629 table); the rest are 80..BF.
    size_t len = 0;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
    } else if (b0 == 0xE0) {
      len = 3, lo = 0xA0;
    } else if (b0 == 0xED) {
      len = 3, hi = 0x9F;  // no surrogates
    } else if (b0 >= 0xE1 && b0 <= 0xEF) {
      len = 3;
    } else if (b0 == 0xF0) {
      len = 4, lo = 0x90;
    } else if (b0 >= 0xF1 && b0 <= 0xF3) {
      len = 4;
    } else if (b0 == 0xF4) {
      len = 4, hi = 0x8F;  // nothing above U+10FFFF
    } else {
      return i;
    }
    if (size - i < len) return i;
    if (data[i + 1] < lo || data[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if ((data[i + k] & 0xC0) != 0x80) return i;
    i += len;
  }
  return i;
}

namespace {

// Per-thread match state, shared by every Regex (match data is independent of the pattern when
// created with a fixed ovector size; only ovector[0..1], the whole match, is read).
struct ThreadMatchState {
  pcre2_match_data* match_data = nullptr;
  pcre2_match_context* match_context = nullptr;
  pcre2_jit_stack* jit_stack = nullptr;

  ThreadMatchState() {
    match_data = pcre2_match_data_create(16, nullptr);
    match_context = pcre2_match_context_create(nullptr);
    jit_stack = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, nullptr);
    MERIDIAN_ASSERT(match_data && match_context, "PCRE2 out of memory");
    if (jit_stack) pcre2_jit_stack_assign(match_context, nullptr, jit_stack);
  }
  ~ThreadMatchState() {
    pcre2_jit_stack_free(jit_stack);
    pcre2_match_context_free(match_context);
    pcre2_match_data_free(match_data);
  }
  ThreadMatchState(const ThreadMatchState&) = delete;
  ThreadMatchState& operator=(const ThreadMatchState&) = delete;
};

ThreadMatchState& thread_match_state() {
  thread_local ThreadMatchState state;
  return state;
}

size_t utf8_char_length(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

}  // namespace

Result<Regex> Regex::compile(std::string_view pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                                   &error_code, &error_offset, nullptr);
  if (!code) {
    PCRE2_UCHAR buffer[256];
    pcre2_get_error_message(error_code, buffer, sizeof(buffer));
    return Status::error("pre-tokenizer regex does not compile at offset " + std::to_string(error_offset) + ": " +
                             reinterpret_cast<const char*>(buffer),
                         "the pattern must be PCRE2 syntax in UTF mode");
  }
  Regex regex;
  regex.pattern_ = std::string(pattern);
  regex.code_ = code;
  // Without a JIT (some platforms), pcre2_match interprets the pattern: slower, same pieces.
  regex.jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return regex;
}

Regex::Regex(Regex&& other) noexcept
    : pattern_(std::move(other.pattern_)), code_(std::exchange(other.code_, nullptr)), jit_(other.jit_) {}

Regex& Regex::operator=(Regex&& other) noexcept {
  if (this != &other) {
    pcre2_code_free(static_cast<pcre2_code*>(code_));
    pattern_ = std::move(other.pattern_);
    code_ = std::exchange(other.code_, nullptr);
    jit_ = other.jit_;
  }
  return *this;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::split(std::string_view text, std::vector<size_t>* piece_ends) const {
  MERIDIAN_ASSERT(code_ != nullptr, "split on a moved-from Regex");
  auto* code = static_cast<const pcre2_code*>(code_);
  ThreadMatchState& state = thread_match_state();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t piece_begin = 0;  // end of the last piece emitted
  size_t search_from = 0;  // where the next match attempt starts (past empty matches)
  while (search_from < n) {
    const int rc = jit_ ? pcre2_jit_match(code, subject, n, search_from, PCRE2_NO_UTF_CHECK, state.match_data,
                                          state.match_context)
                        : pcre2_match(code, subject, n, search_from, PCRE2_NO_UTF_CHECK, state.match_data,
                                      state.match_context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    MERIDIAN_ASSERT(rc >= 0, "PCRE2 match failed with code {} at offset {} of {} bytes", rc, search_from, n);
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.match_data);
    const size_t match_begin = ovector[0], match_end = ovector[1];
    if (match_end == match_begin) {
      // An empty match yields no piece; step over one character so the search progresses. The
      // skipped character joins the next unmatched stretch.
      search_from = match_begin + utf8_char_length(static_cast<uint8_t>(text[match_begin]));
      continue;
    }
    if (match_begin > piece_begin) piece_ends->push_back(match_begin);
    piece_ends->push_back(match_end);
    piece_begin = search_from = match_end;
  }
  if (piece_begin < n) piece_ends->push_back(n);
}

}  // namespace meridian::data
