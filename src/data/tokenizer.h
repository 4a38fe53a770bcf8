// Tokenizer interface and the byte-level tokenizer (ids 0..255 are bytes, then BOS, EOS, PAD).
// The Llama-3 BPE tokenizer (data/bpe.h) implements the same interface.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace meridian::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<uint32_t> encode(std::string_view text) const = 0;  // no BOS/EOS added
  virtual std::string decode(const std::vector<uint32_t>& ids) const = 0;  // specials dropped
  virtual uint32_t vocab_size() const = 0;
  virtual uint32_t bos_id() const = 0;
  virtual uint32_t eos_id() const = 0;
  virtual std::string name() const = 0;
};

class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr uint32_t kBos = 256, kEos = 257, kPad = 258, kVocab = 259;
  std::vector<uint32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<uint32_t>& ids) const override;
  uint32_t vocab_size() const override { return kVocab; }
  uint32_t bos_id() const override { return kBos; }
  uint32_t eos_id() const override { return kEos; }
  std::string name() const override { return "bytes"; }
};

// Where scripts/setup-tokenizer.sh writes the Llama-3 vocabulary, relative to the repository root
// (the working directory of `make` and of the CLI in the demos).
inline constexpr const char* kLlama3TokenizerPath = "data/tokenizers/llama3/tokenizer.json";

// "bytes" -> ByteTokenizer; "llama3" -> the BPE tokenizer from kLlama3TokenizerPath; any other
// name is a path to a Hugging Face tokenizer.json or a tiktoken ranks file (data/bpe.h). Errors
// name the file and list the known names.
Result<std::unique_ptr<Tokenizer>> make_tokenizer(const std::string& name);

}  // namespace meridian::data
