// The byte-level tokenizer: each byte of the UTF-8 text is one id, so every string round-trips
// exactly and no vocabulary file is needed. Specials (BOS, EOS, PAD) sit above the 256 bytes and
// are dropped by decode.
#include "data/tokenizer.h"

#include <filesystem>

#include "data/bpe.h"

namespace meridian::data {

std::vector<uint32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<uint32_t> ids;
  ids.reserve(text.size());
  for (char c : text) ids.push_back(static_cast<unsigned char>(c));
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<uint32_t>& ids) const {
  std::string text;
  text.reserve(ids.size());
  for (uint32_t id : ids)
    if (id < 256) text.push_back(static_cast<char>(id));
  return text;
}

Result<std::unique_ptr<Tokenizer>> make_tokenizer(const std::string& name) {
  if (name == "bytes") return std::unique_ptr<Tokenizer>(std::make_unique<ByteTokenizer>());
  const std::string path = name == "llama3" ? std::string(kLlama3TokenizerPath) : name;
  std::error_code ec;
  if (name != "llama3" && !std::filesystem::exists(path, ec))
    return Status::error("unknown tokenizer '" + name + "' (neither a known name nor an existing file)",
                         "known tokenizers: bytes, llama3 (run scripts/setup-tokenizer.sh first), or a path to a "
                         "tokenizer.json / tiktoken ranks file");
  auto bpe = BpeTokenizer::load(path);
  if (!bpe) return bpe.status();
  if (name == "llama3") bpe.value()->set_name("llama3");
  return std::unique_ptr<Tokenizer>(std::move(bpe.value()));
}

}  // namespace meridian::data
