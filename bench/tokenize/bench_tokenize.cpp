// Tokenizer throughput: encodes one text file with a BPE tokenizer and prints one JSON line
//   {"bytes": N, "tokens": N, "seconds": s, "mb_per_s": x, "threads": 1}
// for a single thread (the number to compare with tiktoken, which encodes on one thread), then
// the same for tokenize_files over all cores on the file (split into documents at blank lines).
//
//   bench_tokenize <tokenizer.json | ranks file | llama3> <text file> [repeats=3] [threads=all cores]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include "core/file.h"
#include "data/bpe.h"
#include "data/tokenize.h"

using namespace meridian;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s <tokenizer> <text file> [repeats=3]\n", argv[0]);
    return 2;
  }
  const int repeats = argc > 3 ? std::atoi(argv[3]) : 3;
  const int threads = argc > 4 ? std::atoi(argv[4]) : static_cast<int>(std::thread::hardware_concurrency());
  auto tok = data::make_tokenizer(argv[1]);
  if (!tok) {
    std::fprintf(stderr, "%s\n", tok.status().to_string().c_str());
    return 1;
  }
  auto text = read_file(argv[2]);
  if (!text) {
    std::fprintf(stderr, "%s\n", text.status().to_string().c_str());
    return 1;
  }
  // Best of `repeats` single-thread passes (the first also warms the piece cache, as tiktoken's
  // own runs do).
  double best = 1e30, first = 0.0;
  size_t tokens = 0;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    tokens = (*tok)->encode(*text).size();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r == 0) first = seconds;
    best = std::min(best, seconds);
  }
  std::printf("{\"bytes\": %zu, \"tokens\": %zu, \"seconds\": %.4f, \"mb_per_s\": %.2f, \"cold_mb_per_s\": %.2f, \"threads\": 1}\n",
              text->size(), tokens, best, static_cast<double>(text->size()) / best / 1e6,
              static_cast<double>(text->size()) / first / 1e6);

  // tokenize_files on every core: the file as a .txt split into documents at lines "%".
  namespace fs = std::filesystem;
  const fs::path out = fs::temp_directory_path() / ("meridian_bench_tokenize_" + std::to_string(::getpid()));
  fs::remove_all(out);
  data::TokenizeOptions options;
  options.doc_separator = "%";
  options.threads = threads;  // fortune-file style documents (bench/tokenize/run.sh builds the corpus so)
  auto stats = data::tokenize_files({argv[2]}, out.string(), **tok, options);
  fs::remove_all(out);
  if (!stats) {
    std::fprintf(stderr, "%s\n", stats.status().to_string().c_str());
    return 1;
  }
  std::printf("{\"bytes\": %llu, \"tokens\": %llu, \"seconds\": %.4f, \"mb_per_s\": %.2f, \"threads\": %d}\n",
              static_cast<unsigned long long>(stats->bytes_in), static_cast<unsigned long long>(stats->train_tokens),
              stats->seconds, static_cast<double>(stats->bytes_in) / stats->seconds / 1e6, threads);
  return 0;
}
