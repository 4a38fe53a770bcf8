// tokenize_files: text and JSON-lines documents -> BOS-prefixed token shards, split
// deterministically into train and val. Single-threaded and streaming (one line of input and at
// most one open shard per split in memory). Prints nothing: the CLI reports the stats.
//
// Invariant: a document is never split across shards, and document d (0-based, counting every
// non-empty document of every input in order) goes to val iff val_fraction > 0 and
// d % k == k - 1, k = round(1 / val_fraction). Empty documents are skipped and not counted.
#include "data/tokenize.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

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

  Status add_document(std::string_view text, uint64_t* tokens_out) {
    if (!writer_) {
      char name[32];
      std::snprintf(name, sizeof(name), "shard_%05d.tok", shards_);
      writer_.emplace((dir_ / name).string(), tokenizer_.vocab_size());
    }
    std::vector<uint32_t> ids = tokenizer_.encode(text);
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

// Routes each document to train or val and keeps the stats.
class DocumentSink {
 public:
  DocumentSink(SplitWriter& train, SplitWriter* val, uint64_t val_every, TokenizeStats& stats)
      : train_(train), val_(val), val_every_(val_every), stats_(stats) {}

  Status add(std::string_view text) {
    if (blank(text)) return Status::ok();
    const uint64_t d = stats_.documents++;
    if (val_ && d % val_every_ == val_every_ - 1) return val_->add_document(text, &stats_.val_tokens);
    return train_.add_document(text, &stats_.train_tokens);
  }

 private:
  SplitWriter& train_;
  SplitWriter* val_;
  uint64_t val_every_;
  TokenizeStats& stats_;
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

  TokenizeStats stats;
  SplitWriter train(out / "train", tokenizer, options.shard_tokens);
  std::unique_ptr<SplitWriter> val;
  if (with_val) val = std::make_unique<SplitWriter>(out / "val", tokenizer, options.shard_tokens);
  DocumentSink sink(train, val.get(), val_every, stats);

  for (const auto& input : inputs) {
    if (ends_with(input, ".jsonl")) {
      MERIDIAN_RETURN_IF_ERROR(read_jsonl(input, options, sink, stats));
    } else {
      MERIDIAN_RETURN_IF_ERROR(read_text(input, options, sink, stats));
    }
  }
  MERIDIAN_RETURN_IF_ERROR(train.close_shard());
  if (val) MERIDIAN_RETURN_IF_ERROR(val->close_shard());
  stats.shards = train.shards() + (val ? val->shards() : 0);
  stats.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return stats;
}

}  // namespace meridian::data
