// Byte-level BPE: encoding, decoding and the two loaders (tokenizer.json, tiktoken ranks). The
// contract and the encoding steps are in bpe.h.
//
// Invariant after a successful load: every byte 0..255 has a token (byte_ids_), every merge's
// parts and result are ordinary tokens, every special has an id no ordinary token uses, and
// vocab_size() = highest id + 1 (unused ids below it decode to nothing).
#include "data/bpe.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/assert.h"
#include "core/file.h"
#include "core/hash.h"
#include "data/shard.h"

namespace meridian::data {

namespace {

// Refuses absurd ids from corrupt files before they size any array.
constexpr uint32_t kMaxVocab = 1u << 22;
// Pieces up to this many bytes merge with the O(n^2) scan; longer ones with the heap.
constexpr size_t kSmallPiece = 48;
// Per-thread piece cache bounds: pieces longer than this are not cached; the cache is cleared
// when it holds this many pieces.
constexpr size_t kCachePieceBytes = 256;
constexpr size_t kCacheEntries = 1u << 16;
constexpr uint32_t kNoRank = UINT32_MAX;

std::atomic<uint64_t> next_instance_id{1};

const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// A short, one-line, printable rendering of a token or merge for error messages.
std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s.substr(0, 40)) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  if (s.size() > 40) out += "...";
  return out;
}

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\r', ' ');
  return s;
}

// GPT-2's byte <-> unicode table: printable Latin-1 bytes stand for themselves, the other 68
// bytes (controls, space, 0x7f-0xa0, 0xad) map to U+0100 onwards, in byte order.
struct ByteLevelTable {
  int16_t byte_of_codepoint[324];  // -1: not a byte-level character
  ByteLevelTable() {
    std::fill(std::begin(byte_of_codepoint), std::end(byte_of_codepoint), int16_t{-1});
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool direct = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
      byte_of_codepoint[direct ? b : 256 + extra++] = static_cast<int16_t>(b);
    }
  }
};

// Decodes a tokenizer.json token string (byte-level characters, UTF-8 encoded) into raw bytes.
bool byte_level_decode(std::string_view s, std::string* out) {
  static const ByteLevelTable table;
  out->clear();
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp = 0;
    if (p[i] < 0x80) {
      cp = p[i];
      i += 1;
    } else if ((p[i] & 0xE0) == 0xC0 && i + 1 < s.size() && (p[i + 1] & 0xC0) == 0x80) {
      cp = ((p[i] & 0x1Fu) << 6) | (p[i + 1] & 0x3Fu);
      i += 2;
    } else {
      return false;  // byte-level characters are all below U+0144: one or two UTF-8 bytes
    }
    if (cp >= std::size(table.byte_of_codepoint) || table.byte_of_codepoint[cp] < 0) return false;
    out->push_back(static_cast<char>(table.byte_of_codepoint[cp]));
  }
  return true;
}

// Strict base64 (standard alphabet, '=' padding only at the end).
bool base64_decode(std::string_view s, std::string* out) {
  out->clear();
  if (s.size() % 4 != 0) return false;
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  for (size_t i = 0; i < s.size(); i += 4) {
    const bool last = i + 4 == s.size();
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s[i + static_cast<size_t>(k)];
      if (c == '=' && last && k >= 2) {
        v[k] = 0;
        ++pad;
        continue;
      }
      if (pad > 0) return false;  // data after padding
      v[k] = value(c);
      if (v[k] < 0) return false;
    }
    const uint32_t triple = (static_cast<uint32_t>(v[0]) << 18) | (static_cast<uint32_t>(v[1]) << 12) |
                            (static_cast<uint32_t>(v[2]) << 6) | static_cast<uint32_t>(v[3]);
    out->push_back(static_cast<char>(triple >> 16));
    if (pad < 2) out->push_back(static_cast<char>((triple >> 8) & 0xff));
    if (pad < 1) out->push_back(static_cast<char>(triple & 0xff));
  }
  return true;
}

struct CacheHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return xxh3_64(s.data(), s.size()); }
};

// Pieces that needed merging, per thread and per tokenizer instance (owner), bounded.
struct PieceCache {
  uint64_t owner = 0;
  std::unordered_map<std::string, std::vector<uint32_t>, CacheHash, std::equal_to<>> pieces;
};

PieceCache& thread_piece_cache(uint64_t owner) {
  thread_local PieceCache cache;
  if (cache.owner != owner || cache.pieces.size() >= kCacheEntries) {
    cache.pieces.clear();
    cache.owner = owner;
  }
  return cache;
}

const char* const kLoadHint =
    "pass a Hugging Face tokenizer.json or a tiktoken ranks file; for Llama-3 run scripts/setup-tokenizer.sh, "
    "which writes data/tokenizers/llama3/tokenizer.json";

}  // namespace

std::vector<std::string> llama3_special_tokens() {
  std::vector<std::string> specials = {
      "<|begin_of_text|>",           "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
      "<|finetune_right_pad_id|>",   "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
      "<|eom_id|>",                  "<|eot_id|>",      "<|python_tag|>",
  };
  for (int i = 3; i <= 247; ++i) specials.push_back("<|reserved_special_token_" + std::to_string(i) + "|>");
  return specials;
}

// ---- PairTable ---------------------------------------------------------------------------------

void BpeTokenizer::PairTable::reserve(size_t n) {
  size_t capacity = 16;
  while (capacity < 2 * n) capacity *= 2;
  keys_.assign(capacity, kEmpty);
  values_.assign(capacity, Merge{kNoRank, 0});
  mask_ = capacity - 1;
  size_ = 0;
}

namespace {
inline size_t pair_slot(uint64_t key, size_t mask) { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20) & mask; }
}  // namespace

void BpeTokenizer::PairTable::insert(uint32_t left, uint32_t right, Merge merge) {
  if (2 * (size_ + 1) > keys_.size()) {
    // Grow: rehash into twice the capacity.
    std::vector<uint64_t> old_keys = std::move(keys_);
    std::vector<Merge> old_values = std::move(values_);
    const size_t old_size = size_;
    reserve(std::max<size_t>(old_size + 1, old_keys.size()));
    for (size_t i = 0; i < old_keys.size(); ++i)
      if (old_keys[i] != kEmpty) insert(static_cast<uint32_t>(old_keys[i] >> 32), static_cast<uint32_t>(old_keys[i]), old_values[i]);
  }
  const uint64_t key = (static_cast<uint64_t>(left) << 32) | right;
  for (size_t slot = pair_slot(key, mask_);; slot = (slot + 1) & mask_) {
    if (keys_[slot] == key) return;  // first insertion wins
    if (keys_[slot] == kEmpty) {
      keys_[slot] = key;
      values_[slot] = merge;
      ++size_;
      return;
    }
  }
}

const BpeTokenizer::Merge* BpeTokenizer::PairTable::find(uint32_t left, uint32_t right) const {
  if (keys_.empty()) return nullptr;
  const uint64_t key = (static_cast<uint64_t>(left) << 32) | right;
  for (size_t slot = pair_slot(key, mask_);; slot = (slot + 1) & mask_) {
    if (keys_[slot] == key) return &values_[slot];
    if (keys_[slot] == kEmpty) return nullptr;
  }
}

size_t BpeTokenizer::StringHash::operator()(std::string_view s) const noexcept { return xxh3_64(s.data(), s.size()); }

// ---- construction and loading --------------------------------------------------------------------

BpeTokenizer::BpeTokenizer(Regex pretokenizer)
    : pretokenizer_(std::move(pretokenizer)), instance_id_(next_instance_id.fetch_add(1)) {}

BpeTokenizer::~BpeTokenizer() = default;

Result<std::unique_ptr<BpeTokenizer>> BpeTokenizer::load(const std::string& path) {
  auto content = read_file(path);
  if (!content) return Status::error(content.status().message(), kLoadHint);
  const std::string& text = *content;
  if (text.empty()) return Status::error(path + ": empty file, not a tokenizer", kLoadHint);
  if (text.size() >= sizeof(kShardMagic) && std::memcmp(text.data(), kShardMagic, sizeof(kShardMagic)) == 0)
    return Status::error(path + ": is a Meridian token shard, not a tokenizer", kLoadHint);
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '{') return from_hf_json(text, path);
  return from_tiktoken(text, path);
}

Result<std::unique_ptr<BpeTokenizer>> BpeTokenizer::from_hf_json(std::string_view content, const std::string& origin) {
  // nlohmann::json throws on syntax errors and on mistyped fields read with value(); both are a
  // malformed file, reported as one line.
  try {
    return from_hf_json_checked(content, origin);
  } catch (const nlohmann::json::exception& e) {
    return Status::error(origin + ": malformed tokenizer.json (" + one_line(e.what()) + ")", kLoadHint);
  }
}

Result<std::unique_ptr<BpeTokenizer>> BpeTokenizer::from_hf_json_checked(std::string_view content, const std::string& origin) {
  using nlohmann::json;
  const json doc = json::parse(content.begin(), content.end());
  auto fail = [&](const std::string& what) -> Result<std::unique_ptr<BpeTokenizer>> {
    return Status::error(origin + ": " + what, kLoadHint);
  };
  if (!doc.is_object()) return fail("not a tokenizer.json (top level is not a JSON object)");
  auto model_it = doc.find("model");
  if (model_it == doc.end() || !model_it->is_object()) return fail("not a tokenizer.json (no \"model\" object)");
  const json& model = *model_it;
  if (auto type = model.find("type"); type != model.end() && !(type->is_string() && *type == "BPE"))
    return fail("model type " + one_line(type->dump()) + " is not supported (only \"BPE\")");
  auto vocab_it = model.find("vocab");
  auto merges_it = model.find("merges");
  if (vocab_it == model.end() || !vocab_it->is_object()) return fail("model has no \"vocab\" object");
  if (merges_it == model.end() || !merges_it->is_array()) return fail("model has no \"merges\" array");
  if (auto norm = doc.find("normalizer"); norm != doc.end() && !norm->is_null())
    return fail("normalizers are not supported (byte-level BPE needs \"normalizer\": null)");

  // The pre-tokenizer regex: a Split(Regex) inside the pre_tokenizer, or GPT-2's ByteLevel regex.
  std::string pattern;
  bool add_prefix_space = false;
  std::vector<const json*> stack;
  if (auto pre = doc.find("pre_tokenizer"); pre != doc.end()) stack.push_back(&*pre);
  while (!stack.empty()) {
    const json* node = stack.back();
    stack.pop_back();
    if (!node->is_object()) continue;
    const std::string type = node->value("type", std::string());
    if (type == "Sequence") {
      if (auto list = node->find("pretokenizers"); list != node->end() && list->is_array())
        for (auto it = list->rbegin(); it != list->rend(); ++it) stack.push_back(&*it);
    } else if (type == "Split" && pattern.empty()) {
      auto pat = node->find("pattern");
      if (pat != node->end() && pat->is_object() && pat->contains("Regex") && (*pat)["Regex"].is_string())
        pattern = (*pat)["Regex"].get<std::string>();
    } else if (type == "ByteLevel") {
      if (node->value("add_prefix_space", false) == true) add_prefix_space = true;
      if (node->value("use_regex", true) == true && pattern.empty()) pattern = kGpt2Pattern;
    }
  }
  if (pattern.empty()) return fail("no pre-tokenizer regex (expected a Split with a Regex pattern, or ByteLevel)");
  if (add_prefix_space) return fail("ByteLevel add_prefix_space is not supported");
  auto regex = Regex::compile(pattern);
  if (!regex) return fail(regex.status().message());

  std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer(std::move(regex.value())));
  // GPT-2-era files merge even pieces that are whole tokens; Llama-3's sets ignore_merges.
  tok->ignore_merges_ = model.value("ignore_merges", false) == true;
  std::string bytes;
  for (auto it = vocab_it->begin(); it != vocab_it->end(); ++it) {
    if (!it.value().is_number_unsigned() || it.value().get<uint64_t>() >= kMaxVocab)
      return fail("vocab entry '" + printable(it.key()) + "' has id " + one_line(it.value().dump()) +
                  ", not an integer in [0, " + std::to_string(kMaxVocab) + ")");
    const auto id = it.value().get<uint32_t>();
    if (!byte_level_decode(it.key(), &bytes))
      return fail("vocab entry '" + printable(it.key()) + "' is not a byte-level token (only byte-level BPE is supported)");
    if (id >= tok->token_bytes_.size()) {
      tok->token_bytes_.resize(id + 1);
      tok->is_special_.resize(id + 1, false);
    }
    if (!tok->token_bytes_[id].empty()) return fail("token id " + std::to_string(id) + " appears twice in the vocab");
    if (bytes.empty()) return fail("vocab entry with id " + std::to_string(id) + " is empty");
    if (!tok->id_of_bytes_.emplace(bytes, id).second)
      return fail("vocab entries '" + printable(it.key()) + "' decode to the same bytes as another entry");
    tok->token_bytes_[id] = bytes;
  }
  tok->merges_.reserve(merges_it->size());
  std::string left, right;
  uint32_t rank = 0;
  for (const json& merge : *merges_it) {
    std::string left_text, right_text;
    if (merge.is_string()) {
      const std::string& m = merge.get_ref<const std::string&>();
      const size_t space = m.find(' ');
      if (space == std::string::npos || m.find(' ', space + 1) != std::string::npos)
        return fail("merge " + std::to_string(rank) + " '" + printable(m) + "' is not two tokens separated by one space");
      left_text = m.substr(0, space);
      right_text = m.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      left_text = merge[0].get<std::string>();
      right_text = merge[1].get<std::string>();
    } else {
      return fail("merge " + std::to_string(rank) + " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    if (!byte_level_decode(left_text, &left) || !byte_level_decode(right_text, &right))
      return fail("merge " + std::to_string(rank) + " '" + printable(left_text + " " + right_text) + "' is not byte-level");
    auto l = tok->id_of_bytes_.find(left), r = tok->id_of_bytes_.find(right), m = tok->id_of_bytes_.find(left + right);
    if (l == tok->id_of_bytes_.end() || r == tok->id_of_bytes_.end() || m == tok->id_of_bytes_.end())
      return fail("merge " + std::to_string(rank) + " '" + printable(left_text + " " + right_text) +
                  "' uses or makes a token that is not in the vocab");
    tok->merges_.insert(l->second, r->second, Merge{rank, m->second});
    ++rank;
  }
  tok->num_merges_ = rank;

  if (auto added = doc.find("added_tokens"); added != doc.end()) {
    if (!added->is_array()) return fail("\"added_tokens\" is not an array");
    for (const json& a : *added) {
      if (!a.is_object() || !a.contains("id") || !a.contains("content") || !a["id"].is_number_unsigned() ||
          !a["content"].is_string())
        return fail("an added_tokens entry lacks an integer \"id\" or a string \"content\"");
      const uint64_t id64 = a["id"].get<uint64_t>();
      const std::string& content_text = a["content"].get_ref<const std::string&>();
      if (id64 >= kMaxVocab) return fail("added token id " + std::to_string(id64) + " is too large");
      const auto id = static_cast<uint32_t>(id64);
      if (content_text.empty()) return fail("added token " + std::to_string(id) + " is empty");
      if (id >= tok->token_bytes_.size()) {
        tok->token_bytes_.resize(id + 1);
        tok->is_special_.resize(id + 1, false);
      }
      if (!tok->token_bytes_[id].empty())
        return fail("added token '" + printable(content_text) + "' reuses id " + std::to_string(id) + " of " +
                    (tok->is_special_[id] ? "another added token" : "a vocab entry"));
      if (!tok->special_ids_.emplace(content_text, id).second)
        return fail("added token '" + printable(content_text) + "' appears twice");
      tok->token_bytes_[id] = content_text;
      tok->is_special_[id] = true;
    }
  }
  MERIDIAN_RETURN_IF_ERROR(tok->finish(origin));
  return tok;
}

Result<std::unique_ptr<BpeTokenizer>> BpeTokenizer::from_tiktoken(std::string_view content, const std::string& origin,
                                                                  const std::vector<std::string>& specials,
                                                                  std::string_view pattern) {
  auto regex = Regex::compile(pattern);
  if (!regex) return Status::error(origin + ": " + regex.status().message(), kLoadHint);
  std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer(std::move(regex.value())));

  std::string bytes;
  size_t line_no = 0, pos = 0;
  uint32_t max_rank = 0;
  bool any = false;
  while (pos < content.size()) {
    size_t end = content.find('\n', pos);
    if (end == std::string_view::npos) end = content.size();
    std::string_view line = content.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const std::string where = origin + ":" + std::to_string(line_no) + ": ";
    const size_t space = line.find(' ');
    uint64_t rank = 0;
    bool rank_ok = space != std::string_view::npos && space + 1 < line.size() && line.size() - space - 1 <= 8;
    for (size_t i = space + 1; rank_ok && i < line.size(); ++i) {
      if (line[i] < '0' || line[i] > '9') rank_ok = false;
      rank = rank * 10 + static_cast<uint64_t>(line[i] - '0');
    }
    if (!rank_ok || !base64_decode(line.substr(0, space), &bytes) || bytes.empty())
      return Status::error(where + "not a tiktoken ranks line (expected '<base64 token> <rank>')", kLoadHint);
    if (rank >= kMaxVocab) return Status::error(where + "rank " + std::to_string(rank) + " is too large", kLoadHint);
    const auto id = static_cast<uint32_t>(rank);
    if (id >= tok->token_bytes_.size()) {
      tok->token_bytes_.resize(id + 1);
      tok->is_special_.resize(id + 1, false);
    }
    if (!tok->token_bytes_[id].empty()) return Status::error(where + "rank " + std::to_string(id) + " appears twice", kLoadHint);
    if (!tok->id_of_bytes_.emplace(bytes, id).second)
      return Status::error(where + "token '" + printable(bytes) + "' appears twice", kLoadHint);
    tok->token_bytes_[id] = bytes;
    max_rank = std::max(max_rank, id);
    any = true;
  }
  if (!any) return Status::error(origin + ": no tokens (not a tiktoken ranks file)", kLoadHint);

  // tiktoken merges the adjacent pair whose concatenation has the lowest rank. As a pair table:
  // every split of every token into two tokens, ranked by the whole token, inserted in rank order.
  tok->merges_.reserve(tok->id_of_bytes_.size() * 4);
  for (uint32_t id = 0; id <= max_rank; ++id) {
    const std::string& t = tok->token_bytes_[id];
    for (size_t k = 1; k < t.size(); ++k) {
      auto l = tok->id_of_bytes_.find(std::string_view(t).substr(0, k));
      if (l == tok->id_of_bytes_.end()) continue;
      auto r = tok->id_of_bytes_.find(std::string_view(t).substr(k));
      if (r == tok->id_of_bytes_.end()) continue;
      tok->merges_.insert(l->second, r->second, Merge{id, id});
    }
  }
  tok->num_merges_ = static_cast<uint32_t>(tok->merges_.size());

  const size_t first_special = static_cast<size_t>(max_rank) + 1;
  if (first_special + specials.size() > kMaxVocab) return Status::error(origin + ": too many tokens", kLoadHint);
  tok->token_bytes_.resize(first_special + specials.size());
  tok->is_special_.resize(first_special + specials.size(), false);
  for (size_t i = 0; i < specials.size(); ++i) {
    const auto id = static_cast<uint32_t>(first_special + i);
    if (specials[i].empty() || !tok->special_ids_.emplace(specials[i], id).second)
      return Status::error(origin + ": special token '" + printable(specials[i]) + "' is empty or repeated", kLoadHint);
    tok->token_bytes_[id] = specials[i];
    tok->is_special_[id] = true;
  }
  MERIDIAN_RETURN_IF_ERROR(tok->finish(origin));
  return tok;
}

Status BpeTokenizer::finish(const std::string& origin) {
  name_ = origin;
  for (int b = 0; b < 256; ++b) {
    auto it = id_of_bytes_.find(std::string_view(reinterpret_cast<const char*>(&b), 1));
    if (it == id_of_bytes_.end()) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "0x%02x", b);
      return Status::error(origin + ": byte " + buf + " has no token, so this is not a byte-level BPE vocabulary", kLoadHint);
    }
    byte_ids_[b] = it->second;
  }
  auto bos = special_ids_.find(std::string_view("<|begin_of_text|>"));
  auto eos = special_ids_.find(std::string_view("<|end_of_text|>"));
  if (bos == special_ids_.end() || eos == special_ids_.end())
    return Status::error(origin + ": no <|begin_of_text|> / <|end_of_text|> special tokens", kLoadHint);
  bos_id_ = bos->second;
  eos_id_ = eos->second;

  special_prefix_.assign(1u << 16, false);
  for (const auto& [text, id] : special_ids_) {
    const auto b0 = static_cast<uint8_t>(text[0]);
    if (text.size() == 1) {
      for (unsigned b1 = 0; b1 < 256; ++b1) special_prefix_[(b0 << 8) | b1] = true;
    } else {
      special_prefix_[(b0 << 8) | static_cast<uint8_t>(text[1])] = true;
    }
    if (std::find(special_lengths_.begin(), special_lengths_.end(), text.size()) == special_lengths_.end())
      special_lengths_.push_back(text.size());
  }
  std::sort(special_lengths_.rbegin(), special_lengths_.rend());
  return Status::ok();
}

// ---- encoding ------------------------------------------------------------------------------------

size_t BpeTokenizer::find_special(std::string_view text, size_t from, uint32_t* id, size_t* length) const {
  if (special_ids_.empty()) return std::string_view::npos;
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  for (size_t i = from; i < n; ++i) {
    const unsigned b1 = i + 1 < n ? p[i + 1] : 0;
    if (!special_prefix_[(static_cast<unsigned>(p[i]) << 8) | b1] && !(i + 1 == n && special_prefix_[p[i] << 8])) continue;
    for (size_t len : special_lengths_) {
      if (len > n - i) continue;
      auto it = special_ids_.find(text.substr(i, len));
      if (it != special_ids_.end()) {
        *id = it->second;
        *length = len;
        return i;
      }
    }
  }
  return std::string_view::npos;
}

std::vector<uint32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<uint32_t> ids;
  ids.reserve(text.size() / 4 + 16);
  encode_ordinary(text, &ids);
  return ids;
}

void BpeTokenizer::encode_append(std::string_view text, std::vector<uint32_t>* out) const { encode_ordinary(text, out); }

std::vector<uint32_t> BpeTokenizer::encode_with_specials(std::string_view text) const {
  std::vector<uint32_t> ids;
  ids.reserve(text.size() / 4 + 16);
  size_t pos = 0;
  uint32_t id = 0;
  size_t length = 0;
  for (size_t at; (at = find_special(text, pos, &id, &length)) != std::string_view::npos; pos = at + length) {
    encode_ordinary(text.substr(pos, at - pos), &ids);
    ids.push_back(id);
  }
  encode_ordinary(text.substr(pos), &ids);
  return ids;
}

void BpeTokenizer::encode_ordinary(std::string_view text, std::vector<uint32_t>* out) const {
  thread_local std::vector<size_t> piece_ends;
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  size_t i = 0;
  while (i < text.size()) {
    const size_t valid = utf8_valid_prefix(p + i, text.size() - i);
    if (valid == 0) {  // a byte of no well-formed character: a piece of its own
      out->push_back(byte_ids_[p[i]]);
      ++i;
      continue;
    }
    const std::string_view run = text.substr(i, valid);
    piece_ends.clear();
    pretokenizer_.split(run, &piece_ends);
    size_t begin = 0;
    for (size_t end : piece_ends) {
      encode_piece(run.substr(begin, end - begin), out);
      begin = end;
    }
    i += valid;
  }
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<uint32_t>* out) const {
  if (piece.size() == 1) {
    out->push_back(byte_ids_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (ignore_merges_) {
    if (auto it = id_of_bytes_.find(piece); it != id_of_bytes_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  const bool cacheable = piece.size() <= kCachePieceBytes;
  if (cacheable) {
    PieceCache& cache = thread_piece_cache(instance_id_);
    if (auto it = cache.pieces.find(piece); it != cache.pieces.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t before = out->size();
  if (piece.size() <= kSmallPiece) {
    merge_small(piece, out);
  } else {
    merge_heap(piece, out);
  }
  if (cacheable) {
    thread_piece_cache(instance_id_).pieces.emplace(std::string(piece), std::vector<uint32_t>(out->begin() + static_cast<std::ptrdiff_t>(before), out->end()));
  }
}

std::vector<uint32_t> BpeTokenizer::merge_piece(std::string_view piece, bool use_heap) const {
  std::vector<uint32_t> ids;
  if (piece.empty()) return ids;
  if (use_heap) {
    merge_heap(piece, &ids);
  } else {
    merge_small(piece, &ids);
  }
  return ids;
}

// Short pieces: rescan all adjacent pairs for the lowest rank after each merge. O(n^2) in the
// piece length, but n is small and everything stays in two short arrays.
void BpeTokenizer::merge_small(std::string_view piece, std::vector<uint32_t>* out) const {
  thread_local std::vector<uint32_t> ids;
  thread_local std::vector<Merge> pairs;  // pairs[i]: the merge of ids[i], ids[i + 1], or kNoRank
  ids.clear();
  for (char c : piece) ids.push_back(byte_ids_[static_cast<uint8_t>(c)]);
  auto pair_of = [&](size_t i) {
    const Merge* m = merges_.find(ids[i], ids[i + 1]);
    return m ? *m : Merge{kNoRank, 0};
  };
  pairs.clear();
  for (size_t i = 0; i + 1 < ids.size(); ++i) pairs.push_back(pair_of(i));
  while (!pairs.empty()) {
    size_t best = 0;
    for (size_t i = 1; i < pairs.size(); ++i)
      if (pairs[i].rank < pairs[best].rank) best = i;  // strict: leftmost among equal ranks
    if (pairs[best].rank == kNoRank) break;
    ids[best] = pairs[best].merged_id;
    ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    pairs.erase(pairs.begin() + static_cast<std::ptrdiff_t>(best));
    if (best < pairs.size()) pairs[best] = pair_of(best);
    if (best > 0) pairs[best - 1] = pair_of(best - 1);
  }
  out->insert(out->end(), ids.begin(), ids.end());
}

// Long pieces: a min-heap of candidate merges keyed by (rank, start position) over a linked list
// of parts. Entries go stale when a neighbour merges; a popped entry is applied only if both parts
// still hold the ids it was made from. That check is exact because a part's id only ever changes
// to a longer token, and a part only loses its right neighbour by merging with it. O(n log n).
void BpeTokenizer::merge_heap(std::string_view piece, std::vector<uint32_t>* out) const {
  struct Candidate {
    uint32_t rank, pos, left, right;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  constexpr uint32_t kDead = UINT32_MAX;
  constexpr int32_t kNone = -1;
  const auto n = static_cast<uint32_t>(piece.size());
  thread_local std::vector<uint32_t> ids;
  thread_local std::vector<int32_t> prev, next;
  thread_local std::vector<Candidate> heap;
  ids.resize(n);
  prev.resize(n);
  next.resize(n);
  heap.clear();
  for (uint32_t i = 0; i < n; ++i) {
    ids[i] = byte_ids_[static_cast<uint8_t>(piece[i])];
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : kNone;
  }
  auto push = [&](int32_t left_pos) {
    if (left_pos == kNone || next[static_cast<size_t>(left_pos)] == kNone) return;
    const auto l = static_cast<size_t>(left_pos), r = static_cast<size_t>(next[l]);
    if (const Merge* m = merges_.find(ids[l], ids[r])) {
      heap.push_back(Candidate{m->rank, static_cast<uint32_t>(l), ids[l], ids[r]});
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    }
  };
  for (uint32_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const Candidate c = heap.back();
    heap.pop_back();
    if (ids[c.pos] != c.left || next[c.pos] == kNone) continue;
    const auto r = static_cast<size_t>(next[c.pos]);
    if (ids[r] != c.right) continue;
    ids[c.pos] = merges_.find(c.left, c.right)->merged_id;
    ids[r] = kDead;
    next[c.pos] = next[r];
    if (next[r] != kNone) prev[static_cast<size_t>(next[r])] = static_cast<int32_t>(c.pos);
    push(prev[c.pos]);
    push(static_cast<int32_t>(c.pos));
  }
  for (int32_t i = 0; i != kNone; i = next[static_cast<size_t>(i)]) out->push_back(ids[static_cast<size_t>(i)]);
  if (ids.capacity() > (1u << 20)) {  // do not keep a huge piece's buffers for the thread's lifetime
    ids = {};
    prev = {};
    next = {};
    heap = {};
  }
}

std::vector<std::string> BpeTokenizer::pretokenize(std::string_view text) const {
  std::vector<std::string> pieces;
  std::vector<size_t> ends;
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  size_t i = 0;
  while (i < text.size()) {
    const size_t valid = utf8_valid_prefix(p + i, text.size() - i);
    if (valid == 0) {
      pieces.emplace_back(text.substr(i, 1));
      ++i;
      continue;
    }
    ends.clear();
    pretokenizer_.split(text.substr(i, valid), &ends);
    size_t begin = 0;
    for (size_t end : ends) {
      pieces.emplace_back(text.substr(i + begin, end - begin));
      begin = end;
    }
    i += valid;
  }
  return pieces;
}

// ---- decoding and lookups ------------------------------------------------------------------------

std::string BpeTokenizer::decode(const std::vector<uint32_t>& ids) const {
  std::string text;
  for (uint32_t id : ids)
    if (id < token_bytes_.size() && !is_special_[id]) text += token_bytes_[id];
  return text;
}

std::string BpeTokenizer::decode_with_specials(const std::vector<uint32_t>& ids) const {
  std::string text;
  for (uint32_t id : ids)
    if (id < token_bytes_.size()) text += token_bytes_[id];
  return text;
}

Result<uint32_t> BpeTokenizer::special_id(std::string_view text) const {
  auto it = special_ids_.find(text);
  if (it == special_ids_.end())
    return Status::error("tokenizer " + name_ + " has no special token '" + printable(text) + "'");
  return it->second;
}

const std::string& BpeTokenizer::token_bytes(uint32_t id) const {
  MERIDIAN_ASSERT(id < token_bytes_.size(), "token id {} out of range for vocab size {}", id, token_bytes_.size());
  return token_bytes_[id];
}

}  // namespace meridian::data
