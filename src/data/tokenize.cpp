// tokenize_files: text and JSON-lines documents -> BOS-prefixed token shards, split
// deterministically into train and val. Streaming: one batch of documents (a few MiB per thread)
// and at most one open shard per split in memory. The batch is encoded by all threads, then
// written in document order by the calling thread. Prints nothing itself: the caller's
// on_progress callback (e.g. stderr_progress_bar) and the returned stats report.
//
// Invariant: a document is never split across shards, and document d (0-based, counting every
// non-empty document of every input in order) goes to val iff val_fraction > 0 and
// d % k == k - 1, k = round(1 / val_fraction). Empty documents are skipped and not counted. The
// output is the same for every thread count.
#include "data/tokenize.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "data/shard.h"

namespace meridian::data {

namespace {

namespace fs = std::filesystem;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool blank(std::string_view s) { return s.find_first_not_of(" \t\r\n") == std::string_view::npos; }

// One output split (train or val): the shard being filled and the count of shards closed.
class SplitWriter {
 public:
  SplitWriter(fs::path dir, const Tokenizer& tokenizer, uint64_t shard_tokens)
      : dir_(std::move(dir)), tokenizer_(tokenizer), shard_tokens_(shard_tokens) {}

  Status add_document(const std::vector<uint32_t>& ids, uint64_t* tokens_out) {
    if (!writer_) {
      char name[32];
      std::snprintf(name, sizeof(name), "shard_%05d.tok", shards_);
      writer_.emplace((dir_ / name).string(), tokenizer_.vocab_size());
    }
    const uint32_t bos = tokenizer_.bos_id();
    writer_->append(&bos, 1);
    writer_->append(ids.data(), ids.size());
    *tokens_out += ids.size() + 1;
    if (writer_->count() >= shard_tokens_) return close_shard();
    return Status::ok();
  }

  Status close_shard() {
    if (!writer_) return Status::ok();
    Status st = writer_->finish();
    writer_.reset();
    ++shards_;
    return st;
  }

  int shards() const { return shards_; }

 private:
  fs::path dir_;
  const Tokenizer& tokenizer_;
  uint64_t shard_tokens_;
  std::optional<ShardWriter> writer_;
  int shards_ = 0;
};

// Encodes batches of documents on `threads` threads: threads - 1 workers live as long as the pool
// (so their per-thread tokenizer caches stay warm across batches) and the calling thread works
// too. Documents are handed out one at a time through an atomic counter, so long documents do not
// leave threads idle; ids[i] is always the encoding of texts[i], whatever thread made it.
class EncodePool {
 public:
  EncodePool(const Tokenizer& tokenizer, int threads) : tokenizer_(tokenizer) {
    for (int t = 1; t < threads; ++t) workers_.emplace_back([this] { worker_loop(); });
  }
  ~EncodePool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_ready_.notify_all();
    for (auto& w : workers_) w.join();
  }
  EncodePool(const EncodePool&) = delete;
  EncodePool& operator=(const EncodePool&) = delete;

  // Blocks until every text is encoded.
  void run(const std::vector<std::string>& texts, std::vector<std::vector<uint32_t>>& ids) {
    ids.resize(texts.size());
    {
      std::lock_guard<std::mutex> lock(mu_);
      texts_ = &texts;
      ids_ = &ids;
      next_.store(0);
      busy_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    work_ready_.notify_all();
    encode_some();
    std::unique_lock<std::mutex> lock(mu_);
    work_done_.wait(lock, [this] { return busy_ == 0; });
  }

 private:
  void encode_some() {
    for (size_t i; (i = next_.fetch_add(1, std::memory_order_relaxed)) < texts_->size();)
      (*ids_)[i] = tokenizer_.encode((*texts_)[i]);
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        work_ready_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      encode_some();
      std::lock_guard<std::mutex> lock(mu_);
      if (--busy_ == 0) work_done_.notify_one();
    }
  }

  const Tokenizer& tokenizer_;
  std::vector<std::thread> workers_;
  // mu_ guards generation_, busy_, stop_ and the batch pointers' publication; next_ is the only
  // state workers share while encoding.
  std::mutex mu_;
  std::condition_variable work_ready_, work_done_;
  uint64_t generation_ = 0;
  int busy_ = 0;
  bool stop_ = false;
  const std::vector<std::string>* texts_ = nullptr;
  std::vector<std::vector<uint32_t>>* ids_ = nullptr;
  std::atomic<size_t> next_{0};
};

// Routes each document to train or val, batches them for parallel encoding, and keeps the stats
// and the progress reports.
class DocumentSink {
 public:
  DocumentSink(const Tokenizer& tokenizer, SplitWriter& train, SplitWriter* val, uint64_t val_every, int threads,
               TokenizeStats& stats, const TokenizeOptions& options, uint64_t bytes_total,
               std::chrono::steady_clock::time_point t0)
      : train_(train),
        val_(val),
        val_every_(val_every),
        pool_(tokenizer, threads),
        batch_bytes_(static_cast<uint64_t>(threads) * (2u << 20)),
        stats_(stats),
        options_(options),
        bytes_total_(bytes_total),
        t0_(t0) {}

  Status add(std::string_view text) {
    if (blank(text)) return Status::ok();
    const uint64_t d = stats_.documents++;
    pending_val_.push_back(val_ && d % val_every_ == val_every_ - 1);
    pending_.emplace_back(text);
    pending_bytes_ += text.size();
    if (pending_bytes_ >= batch_bytes_) return flush();
    return Status::ok();
  }

  // Encodes and writes every pending document, then reports progress.
  Status flush() {
    pool_.run(pending_, ids_);
    for (size_t i = 0; i < pending_.size(); ++i) {
      if (pending_val_[i]) {
        MERIDIAN_RETURN_IF_ERROR(val_->add_document(ids_[i], &stats_.val_tokens));
      } else {
        MERIDIAN_RETURN_IF_ERROR(train_.add_document(ids_[i], &stats_.train_tokens));
      }
    }
    pending_.clear();
    pending_val_.clear();
    pending_bytes_ = 0;
    report(false);
    return Status::ok();
  }

  void report(bool done) const {
    if (!options_.on_progress) return;
    TokenizeProgress p;
    p.bytes_done = stats_.bytes_in;
    p.bytes_total = std::max(bytes_total_, stats_.bytes_in);
    p.documents = stats_.documents;
    p.tokens = stats_.train_tokens + stats_.val_tokens;
    p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    p.done = done;
    options_.on_progress(p);
  }

 private:
  SplitWriter& train_;
  SplitWriter* val_;
  uint64_t val_every_;
  EncodePool pool_;
  uint64_t batch_bytes_;
  TokenizeStats& stats_;
  const TokenizeOptions& options_;
  uint64_t bytes_total_;
  std::chrono::steady_clock::time_point t0_;
  std::vector<std::string> pending_;
  std::vector<bool> pending_val_;
  uint64_t pending_bytes_ = 0;
  std::vector<std::vector<uint32_t>> ids_;
};

Status read_text(const std::string& path, const TokenizeOptions& options, DocumentSink& sink, TokenizeStats& stats) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::error(path + ": cannot open", "check that the file exists and is readable");
  std::string doc, line;
  // getline drops the '\n'; it is put back so that documents keep their line structure.
  while (std::getline(in, line)) {
    stats.bytes_in += line.size() + (in.eof() ? 0 : 1);
    std::string_view content(line);
    if (!content.empty() && content.back() == '\r') content.remove_suffix(1);
    if (!options.doc_separator.empty() && content == options.doc_separator) {
      MERIDIAN_RETURN_IF_ERROR(sink.add(doc));
      doc.clear();
      continue;
    }
    doc += line;
    if (!in.eof()) doc += '\n';
  }
  if (in.bad()) return Status::error(path + ": read failed");
  return sink.add(doc);
}

Status read_jsonl(const std::string& path, const TokenizeOptions& options, DocumentSink& sink, TokenizeStats& stats) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::error(path + ": cannot open", "check that the file exists and is readable");
  std::string line;
  uint64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    stats.bytes_in += line.size() + (in.eof() ? 0 : 1);
    if (blank(line)) continue;
    const std::string where = path + ":" + std::to_string(line_no);
    auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (record.is_discarded())
      return Status::error(where + ": malformed JSON line", "each line of a .jsonl file must be one JSON object");
    if (!record.is_object()) return Status::error(where + ": line is not a JSON object", "each line of a .jsonl file must be one JSON object");
    auto field = record.find(options.text_field);
    if (field == record.end() || !field->is_string())
      return Status::error(where + ": no string field '" + options.text_field + "'",
                           "set the text field name (TokenizeOptions::text_field) to the one the file uses");
    MERIDIAN_RETURN_IF_ERROR(sink.add(field->get_ref<const std::string&>()));
  }
  if (in.bad()) return Status::error(path + ": read failed");
  return Status::ok();
}

// Refuses to mix new shards with those of an earlier run, which the loader would read as one
// dataset.
Status prepare_dir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::error(dir.string() + ": cannot create directory (" + ec.message() + ")");
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".tok")
      return Status::error(dir.string() + ": already contains token shards (" + entry.path().filename().string() + ")",
                           "choose an empty output directory, or delete the old shards first");
  }
  if (ec) return Status::error(dir.string() + ": cannot list directory (" + ec.message() + ")");
  return Status::ok();
}

}  // namespace

Result<TokenizeStats> tokenize_files(const std::vector<std::string>& inputs, const std::string& out_dir,
                                     const Tokenizer& tokenizer, const TokenizeOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  // User errors first, all at once.
  std::string problems;
  if (inputs.empty()) problems += "no input files; ";
  if (options.shard_tokens == 0) problems += "shard_tokens must be positive; ";
  if (!(options.val_fraction >= 0.0 && options.val_fraction < 1.0))
    problems += "val_fraction " + std::to_string(options.val_fraction) + " is not in [0, 1); ";
  for (const auto& input : inputs) {
    std::error_code ec;
    if (!fs::is_regular_file(input, ec)) problems += input + " is not a readable file; ";
  }
  if (!problems.empty()) {
    problems.resize(problems.size() - 2);
    return Status::error("tokenize: " + problems, "pass existing .txt or .jsonl files, shard_tokens > 0, 0 <= val_fraction < 1");
  }

  const fs::path out(out_dir);
  MERIDIAN_RETURN_IF_ERROR(prepare_dir(out / "train"));
  const bool with_val = options.val_fraction > 0.0;
  if (with_val) MERIDIAN_RETURN_IF_ERROR(prepare_dir(out / "val"));
  const uint64_t val_every = with_val ? std::max<uint64_t>(1, static_cast<uint64_t>(std::llround(1.0 / options.val_fraction))) : 1;

  uint64_t bytes_total = 0;
  for (const auto& input : inputs) {
    std::error_code ec;
    const auto size = fs::file_size(input, ec);
    if (!ec) bytes_total += size;
  }
  const int threads = options.threads > 0 ? options.threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));

  TokenizeStats stats;
  SplitWriter train(out / "train", tokenizer, options.shard_tokens);
  std::unique_ptr<SplitWriter> val;
  if (with_val) val = std::make_unique<SplitWriter>(out / "val", tokenizer, options.shard_tokens);
  DocumentSink sink(tokenizer, train, val.get(), val_every, threads, stats, options, bytes_total, t0);

  for (const auto& input : inputs) {
    if (ends_with(input, ".jsonl")) {
      MERIDIAN_RETURN_IF_ERROR(read_jsonl(input, options, sink, stats));
    } else {
      MERIDIAN_RETURN_IF_ERROR(read_text(input, options, sink, stats));
    }
  }
  MERIDIAN_RETURN_IF_ERROR(sink.flush());
  MERIDIAN_RETURN_IF_ERROR(train.close_shard());
  if (val) MERIDIAN_RETURN_IF_ERROR(val->close_shard());
  stats.shards = train.shards() + (val ? val->shards() : 0);
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  sink.report(true);
  return stats;
}

std::function<void(const TokenizeProgress&)> stderr_progress_bar() {
  // The state lives in the closure; the callback runs on tokenize_files' calling thread only.
  auto last_draw = std::make_shared<double>(-1.0);
  return [last_draw](const TokenizeProgress& p) {
    if (!p.done && *last_draw >= 0.0 && p.seconds - *last_draw < 0.2) return;
    *last_draw = p.seconds;
    const double fraction = p.bytes_total > 0 ? static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total) : 1.0;
    constexpr int kWidth = 24;
    const int filled = std::clamp(static_cast<int>(fraction * kWidth), 0, kWidth);
    const std::string bar = std::string(static_cast<size_t>(filled), '#') + std::string(static_cast<size_t>(kWidth - filled), '.');
    const double mb_per_s = p.seconds > 0.0 ? static_cast<double>(p.bytes_done) / 1e6 / p.seconds : 0.0;
    std::fprintf(stderr, "\rtokenize [%s] %3d%%  %.1f/%.1f MB  %.1f MB/s  %llu docs  %.2fM tokens%s", bar.c_str(),
                 static_cast<int>(fraction * 100.0), static_cast<double>(p.bytes_done) / 1e6,
                 static_cast<double>(p.bytes_total) / 1e6, mb_per_s, static_cast<unsigned long long>(p.documents),
                 static_cast<double>(p.tokens) / 1e6, p.done ? "\n" : "");
    std::fflush(stderr);
  };
}

}  // namespace meridian::data
