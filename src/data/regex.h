// Pre-tokenization for byte-level BPE: a PCRE2 regex (UTF + Unicode properties, JIT-compiled
// when the library supports it) that cuts text into pieces, plus the UTF-8 validation that
// decides which bytes the regex may see.
//
// What it does not do: BPE merges (bpe.h) or special tokens. It never sees invalid UTF-8: the
// caller cuts the text into maximal well-formed runs with utf8_valid_prefix() first, so the
// matcher can skip PCRE2's own UTF check.
// Invariant: split() covers its input exactly: the piece ends it returns are strictly
// increasing and the last one is text.size() (a stretch that no match covers is a piece too).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace meridian::data {

// The Llama-3 (and tiktoken cl100k-family) pre-tokenization pattern, as Meta's tokenizer and
// Hugging Face's tokenizer.json write it.
inline constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Length of the longest prefix of [data, data + size) that is well-formed UTF-8 (RFC 3629: no
// overlong forms, no surrogates, nothing above U+10FFFF). 0 when the first byte starts no
// well-formed character.
size_t utf8_valid_prefix(const uint8_t* data, size_t size);

class Regex {
 public:
  // Compiles `pattern` in UTF mode with Unicode properties (\s, \w, \d and case folding follow
  // Unicode) and JIT-compiles it when PCRE2 has a JIT. Error: the pattern's compile error and
  // offset.
  static Result<Regex> compile(std::string_view pattern);

  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  ~Regex();

  // Appends to `piece_ends` the end offset of each piece of `text` (which must be well-formed
  // UTF-8): each leftmost match in turn, and any unmatched stretch between them. Thread-safe:
  // the match state lives in thread-local storage.
  void split(std::string_view text, std::vector<size_t>* piece_ends) const;

  const std::string& pattern() const { return pattern_; }
  bool jit() const { return jit_; }

 private:
  Regex() = default;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*, owned
  bool jit_ = false;
};

}  // namespace meridian::data
