// Turns text into token shards: the engine behind `meridian tokenize`.
// Inputs: .txt files (one document per file, or split at lines equal to `doc_separator`) and
// .jsonl files (one document per line, text in field `text_field`). Each document is encoded,
// prefixed with BOS, and appended to the current shard; a shard is closed when it reaches
// `shard_tokens`. With val_fraction > 0 every k-th document (k = round(1 / val_fraction)) goes
// to the validation split instead, deterministically.
// Output: <out_dir>/train/shard_00000.tok ... and <out_dir>/val/shard_00000.tok ...
// Threads: documents are read in order by the calling thread into batches of a few MiB, each
// batch is encoded by `threads` threads (the tokenizer's const methods are thread-safe), then
// written in document order, so the shards do not depend on the thread count.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "data/tokenizer.h"

namespace meridian::data {

// Progress so far, reported after each batch and once at the end (done = true).
struct TokenizeProgress {
  uint64_t bytes_done = 0;   // input bytes read and encoded
  uint64_t bytes_total = 0;  // sum of the input files' sizes
  uint64_t documents = 0;
  uint64_t tokens = 0;       // train + val, BOS included
  double seconds = 0.0;
  bool done = false;
};

struct TokenizeOptions {
  std::string doc_separator;        // empty: whole .txt file is one document
  std::string text_field = "text";  // for .jsonl
  uint64_t shard_tokens = 1ull << 26;
  double val_fraction = 0.0;
  int threads = 0;                  // encoding threads; 0: all cores (std::thread::hardware_concurrency)
  // Called on the calling thread; empty: no reports. stderr_progress_bar() draws a bar.
  std::function<void(const TokenizeProgress&)> on_progress;
};

// A progress reporter for the CLI: one line on stderr, redrawn in place at most 5 times a second,
//   tokenize [#########.........]  45%  123.4/274.0 MB  35.2 MB/s  1234 docs  56.7M tokens
// and left on screen (newline) when done.
std::function<void(const TokenizeProgress&)> stderr_progress_bar();

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
