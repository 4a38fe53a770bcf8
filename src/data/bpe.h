// Byte-level BPE tokenizer compatible with tiktoken and Llama-3 (128,000 ranked tokens + 256
// specials = 128,256 ids), loaded from a Hugging Face tokenizer.json or a tiktoken ranks file.
//
// Encoding, in order:
//   1. (encode_with_specials only) special tokens written literally in the text, e.g.
//      "<|eot_id|>", become their ids; encode() treats them as ordinary text, like Meta's
//      reference tokenizer does by default, so data cannot smuggle control tokens in.
//   2. Invalid UTF-8: the text is cut into maximal well-formed UTF-8 runs and single bytes that
//      belong to no well-formed character. Each such byte is a piece of its own and becomes its
//      byte token; the runs go on to step 3 independently (so a piece never spans an invalid
//      byte; an invalid byte acts like the end of the text for the regex's look-ahead).
//      tiktoken and Hugging Face take only valid strings, so this rule is ours; the parity test
//      feeds llama3-tokenizer-js the same cut.
//   3. Pre-tokenization: the regex (the Llama-3 pattern) splits each run into pieces.
//   4. A piece that is itself a token gives that id directly (tiktoken's shortcut, Hugging Face's
//      ignore_merges); otherwise its bytes start as byte tokens and the adjacent pair with the
//      lowest merge rank is merged, leftmost first among equal ranks, until no pair merges.
//      Rank = merge index for tokenizer.json, rank of the merged token for tiktoken files (the two
//      agree on the Llama-3 vocabulary).
// Decoding concatenates token bytes, so decode(encode(x)) == x for every byte string x.
//
// Cost: pieces that are whole tokens take one hash lookup. Others are merged in O(n^2) for short
// pieces (n <= 48 bytes, the common case, cache-friendly) and O(n log n) with a heap and a linked
// list for longer ones (runs of spaces, long words), and are cached per thread.
// Thread safety: every const method may be called from many threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/status.h"
#include "data/regex.h"
#include "data/tokenizer.h"

namespace meridian::data {

// The 256 special tokens of Llama-3.1 in id order, starting at 128000: <|begin_of_text|>,
// <|end_of_text|>, <|reserved_special_token_0|>, <|reserved_special_token_1|>,
// <|finetune_right_pad_id|>, <|reserved_special_token_2|>, <|start_header_id|>,
// <|end_header_id|>, <|eom_id|>, <|eot_id|>, <|python_tag|>, <|reserved_special_token_3|> ...
// <|reserved_special_token_247|> (the list llama3-tokenizer-js and Hugging Face ship).
std::vector<std::string> llama3_special_tokens();

class BpeTokenizer final : public Tokenizer {
 public:
  // Loads `path`: a Hugging Face tokenizer.json (first non-blank byte '{') or a tiktoken ranks
  // file (lines "<base64 token bytes> <rank>"; specials are the Llama-3 list, numbered from the
  // number of ranks). Every error is one line that starts with the path.
  static Result<std::unique_ptr<BpeTokenizer>> load(const std::string& path);
  // The same from file contents already in memory; `origin` names them in errors.
  static Result<std::unique_ptr<BpeTokenizer>> from_hf_json(std::string_view content, const std::string& origin);
  static Result<std::unique_ptr<BpeTokenizer>> from_tiktoken(std::string_view content, const std::string& origin,
                                                             const std::vector<std::string>& specials = llama3_special_tokens(),
                                                             std::string_view pattern = kLlama3Pattern);

  ~BpeTokenizer() override;
  BpeTokenizer(const BpeTokenizer&) = delete;
  BpeTokenizer& operator=(const BpeTokenizer&) = delete;

  // Tokenizer interface. encode: special-token text is ordinary text; no BOS. decode: specials
  // are dropped.
  std::vector<uint32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<uint32_t>& ids) const override;
  uint32_t vocab_size() const override { return static_cast<uint32_t>(token_bytes_.size()); }
  uint32_t bos_id() const override { return bos_id_; }
  uint32_t eos_id() const override { return eos_id_; }
  std::string name() const override { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }

  // Appends the encoding of `text` to `out` (encode() without the allocation).
  void encode_append(std::string_view text, std::vector<uint32_t>* out) const;
  // Chat-template and Hugging Face behaviour: special-token text becomes the special's id.
  std::vector<uint32_t> encode_with_specials(std::string_view text) const;
  // Renders specials as their text, so decode_with_specials(encode_with_specials(x)) == x.
  std::string decode_with_specials(const std::vector<uint32_t>& ids) const;

  // The id of a special token by its text ("<|eot_id|>"), or an error naming it.
  Result<uint32_t> special_id(std::string_view text) const;
  bool is_special(uint32_t id) const { return id < is_special_.size() && is_special_[id]; }
  // The bytes of token `id` (the special's text for specials). id < vocab_size(), asserted.
  const std::string& token_bytes(uint32_t id) const;
  uint32_t num_merges() const { return num_merges_; }
  const Regex& pretokenizer() const { return pretokenizer_; }

  // The pieces step 3 cuts `text` into (valid UTF-8 runs split by the regex, invalid bytes alone),
  // for tests and tools.
  std::vector<std::string> pretokenize(std::string_view text) const;
  // Step 4 on one piece without the whole-token shortcut and the cache; `use_heap` picks the
  // O(n log n) algorithm regardless of length. For tests that compare the two.
  std::vector<uint32_t> merge_piece(std::string_view piece, bool use_heap) const;

 private:
  struct Merge {
    uint32_t rank;
    uint32_t merged_id;
  };
  // Open-addressing map (left id, right id) -> Merge; ids < 2^31, so the all-ones key is free.
  class PairTable {
   public:
    void reserve(size_t n);
    // Keeps the first insertion of a pair (the lowest rank when inserted in rank order).
    void insert(uint32_t left, uint32_t right, Merge merge);
    const Merge* find(uint32_t left, uint32_t right) const;
    size_t size() const { return size_; }

   private:
    static constexpr uint64_t kEmpty = ~0ull;
    std::vector<uint64_t> keys_;
    std::vector<Merge> values_;
    size_t mask_ = 0, size_ = 0;
  };
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const noexcept;
  };
  using IdMap = std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>>;

  explicit BpeTokenizer(Regex pretokenizer);
  static Result<std::unique_ptr<BpeTokenizer>> from_hf_json_checked(std::string_view content, const std::string& origin);
  // Shared tail of both loaders: specials, byte ids, BOS/EOS; errors name `origin`.
  Status finish(const std::string& origin);
  void encode_ordinary(std::string_view text, std::vector<uint32_t>* out) const;
  void encode_piece(std::string_view piece, std::vector<uint32_t>* out) const;
  void merge_small(std::string_view piece, std::vector<uint32_t>* out) const;
  void merge_heap(std::string_view piece, std::vector<uint32_t>* out) const;
  // Position and id of the first special token in text[from:], or npos.
  size_t find_special(std::string_view text, size_t from, uint32_t* id, size_t* length) const;

  std::string name_;
  Regex pretokenizer_;
  std::vector<std::string> token_bytes_;  // by id; a special's text for specials; empty for unused ids
  std::vector<bool> is_special_;          // by id
  IdMap id_of_bytes_;                     // ordinary tokens only
  IdMap special_ids_;
  std::vector<size_t> special_lengths_;   // distinct lengths, longest first
  std::vector<bool> special_prefix_;      // [65536]: first two bytes of some special
  uint32_t byte_ids_[256] = {};
  PairTable merges_;
  uint32_t num_merges_ = 0;
  uint32_t bos_id_ = 0, eos_id_ = 0;
  bool ignore_merges_ = true;  // a piece that is a whole token gives that token (step 4)
  uint64_t instance_id_ = 0;  // keys the per-thread piece cache
};

}  // namespace meridian::data
