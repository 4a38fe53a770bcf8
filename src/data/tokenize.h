// Turns text into token shards: the engine behind `meridian tokenize`.
// Inputs: .txt files (one document per file, or split at lines equal to `doc_separator`) and
// .jsonl files (one document per line, text in field `text_field`). Each document is encoded,
// prefixed with BOS, and appended to the current shard; a shard is closed when it reaches
// `shard_tokens`. With val_fraction > 0 every k-th document (k = round(1 / val_fraction)) goes
// to the validation split instead, deterministically.
// Output: <out_dir>/train/shard_00000.tok ... and <out_dir>/val/shard_00000.tok ...
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "data/tokenizer.h"

namespace meridian::data {

struct TokenizeOptions {
  std::string doc_separator;        // empty: whole .txt file is one document
  std::string text_field = "text";  // for .jsonl
  uint64_t shard_tokens = 1ull << 26;
  double val_fraction = 0.0;
};

struct TokenizeStats {
  uint64_t documents = 0;
  uint64_t bytes_in = 0;
  uint64_t train_tokens = 0;
  uint64_t val_tokens = 0;
  int shards = 0;
  double seconds = 0.0;
};

Result<TokenizeStats> tokenize_files(const std::vector<std::string>& inputs, const std::string& out_dir,
                                     const Tokenizer& tokenizer, const TokenizeOptions& options);

}  // namespace meridian::data
