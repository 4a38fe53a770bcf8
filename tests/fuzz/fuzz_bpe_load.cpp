// Fuzz target: the BPE loaders on arbitrary bytes (input starting with '{' goes to the
// tokenizer.json loader, anything else to the tiktoken ranks loader). A refused input must give a
// one-line error that names the origin and carries a hint; an accepted one must be a usable
// byte-level tokenizer: BOS/EOS inside the vocabulary, and encode/decode round trips on text with
// specials, invalid UTF-8 and a slice of the input itself.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/assert.h"
#include "data/bpe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace meridian::data;
  const std::string_view content(reinterpret_cast<const char*>(data), size);
  const bool json = size > 0 && data[0] == '{';
  auto tok = json ? BpeTokenizer::from_hf_json(content, "fuzz")
                  : BpeTokenizer::from_tiktoken(content, "fuzz", {"<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"});
  if (!tok.is_ok()) {
    const meridian::Status& st = tok.status();
    MERIDIAN_ASSERT(st.message().rfind("fuzz", 0) == 0, "error does not name the origin: {}", st.message());
    MERIDIAN_ASSERT(st.message().find('\n') == std::string::npos, "error is not one line: {}", st.message());
    MERIDIAN_ASSERT(!st.hint().empty(), "error without a hint: {}", st.message());
    return 0;
  }
  const BpeTokenizer& t = **tok;
  MERIDIAN_ASSERT(t.bos_id() < t.vocab_size() && t.eos_id() < t.vocab_size(), "bos {} eos {} vocab {}", t.bos_id(),
                  t.eos_id(), t.vocab_size());
  const std::string samples[] = {
      "Hello, world! It's 2026.\n\n  abc <|eot_id|> caf\xc3\xa9 \xff\xe4\xbd",
      std::string(content.substr(0, 256)),
  };
  for (const std::string& text : samples) {
    const std::string back = t.decode(t.encode(text));
    MERIDIAN_ASSERT(back == text, "round trip failed ({} bytes in, {} out)", text.size(), back.size());
    const std::string back_specials = t.decode_with_specials(t.encode_with_specials(text));
    MERIDIAN_ASSERT(back_specials == text, "round trip with specials failed ({} bytes in, {} out)", text.size(),
                    back_specials.size());
  }
  return 0;
}
