// BpeTokenizer on small hand-made vocabularies: the Llama-3 regex split on hand-checked cases,
// rank-ordered merges (lowest rank first, leftmost on ties), the two merge algorithms agreeing,
// specials, invalid UTF-8, round trips of random bytes, both file formats agreeing, and the
// loaders' refusals (missing file, malformed JSON, wrong file kind) with one-line errors that
// name the file. The real Llama-3 vocabulary is exercised by data_bpe_parity_test.cpp.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/hash.h"
#include "data/bpe.h"
#include "data/regex.h"
#include "data/shard.h"

namespace meridian::data {
namespace {

namespace fs = std::filesystem;
using Pieces = std::vector<std::string>;

std::string base64(std::string_view bytes) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (uint32_t(uint8_t(bytes[i])) << 16) | (uint32_t(uint8_t(bytes[i + 1])) << 8) | uint8_t(bytes[i + 2]);
    for (int k = 3; k >= 0; --k) out += kAlphabet[(v >> (6 * k)) & 63];
  }
  if (i + 1 == bytes.size()) {
    const uint32_t v = uint32_t(uint8_t(bytes[i])) << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == bytes.size()) {
    const uint32_t v = (uint32_t(uint8_t(bytes[i])) << 16) | (uint32_t(uint8_t(bytes[i + 1])) << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

// GPT-2's byte -> character table, UTF-8 encoded, for writing tokenizer.json fixtures.
std::string byte_level(std::string_view bytes) {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool direct = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
      const int cp = direct ? b : 256 + extra++;
      std::string s;
      if (cp < 0x80) {
        s += static_cast<char>(cp);
      } else {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      }
      t[static_cast<size_t>(b)] = s;
    }
    return t;
  }();
  std::string out;
  for (char c : bytes) out += table[static_cast<uint8_t>(c)];
  return out;
}

const std::vector<std::string> kSpecials = {"<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"};

// Ranks file: the 256 bytes at ranks 0..255, then `extra` tokens at 256, 257, ...
std::string ranks_file(const std::vector<std::string>& extra) {
  std::string text;
  for (int b = 0; b < 256; ++b) text += base64(std::string(1, static_cast<char>(b))) + " " + std::to_string(b) + "\n";
  for (size_t i = 0; i < extra.size(); ++i) text += base64(extra[i]) + " " + std::to_string(256 + i) + "\n";
  return text;
}

std::unique_ptr<BpeTokenizer> tiny(const std::vector<std::string>& extra) {
  auto tok = BpeTokenizer::from_tiktoken(ranks_file(extra), "tiny", kSpecials);
  EXPECT_TRUE(tok.is_ok()) << tok.status().to_string();
  return tok ? std::move(tok.value()) : nullptr;
}

// The same vocabulary as a tokenizer.json: merges listed in the rank order of their result.
std::string hf_json(const std::vector<std::string>& extra, const std::vector<std::pair<std::string, std::string>>& merges) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level(std::string(1, static_cast<char>(b)))] = b;
  for (size_t i = 0; i < extra.size(); ++i) vocab[byte_level(extra[i])] = 256 + i;
  nlohmann::json merge_list = nlohmann::json::array();
  for (const auto& [l, r] : merges) merge_list.push_back(byte_level(l) + " " + byte_level(r));
  nlohmann::json added = nlohmann::json::array();
  for (size_t i = 0; i < kSpecials.size(); ++i) added.push_back({{"id", 256 + extra.size() + i}, {"content", kSpecials[i]}, {"special", true}});
  nlohmann::json doc = {
      {"version", "1.0"},
      {"normalizer", nullptr},
      {"added_tokens", added},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", std::string(kLlama3Pattern)}}}, {"behavior", "Isolated"}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"model", {{"type", "BPE"}, {"ignore_merges", true}, {"vocab", vocab}, {"merges", merge_list}}}};
  return doc.dump();
}

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() / ("meridian_bpe_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string path(const std::string& name) const { return (path_ / name).string(); }
  std::string file(const std::string& name, const std::string& content) const {
    const std::string p = (path_ / name).string();
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }

 private:
  fs::path path_;
};

Pieces split(std::string_view text) {
  static const auto tok = tiny({});
  return tok->pretokenize(text);
}

TEST(data_Bpe, Utf8ValidPrefix) {
  auto valid = [](std::string_view s) { return utf8_valid_prefix(reinterpret_cast<const uint8_t*>(s.data()), s.size()); };
  EXPECT_EQ(valid("abc"), 3u);
  EXPECT_EQ(valid("a\xc3\xa9z"), 4u);            // é
  EXPECT_EQ(valid("\xf0\x9f\xa6\x99"), 4u);      // 🦙
  EXPECT_EQ(valid("a\xffz"), 1u);                // never valid
  EXPECT_EQ(valid("\xc0\xaf"), 0u);              // overlong '/'
  EXPECT_EQ(valid("\xed\xa0\x80"), 0u);          // surrogate U+D800
  EXPECT_EQ(valid("\xf4\x90\x80\x80"), 0u);      // above U+10FFFF
  EXPECT_EQ(valid("\xe4\xbd"), 0u);              // truncated
  EXPECT_EQ(valid("ab\xe4\xbd\xa0"), 5u);        // 你
}

TEST(data_Bpe, Llama3RegexSplitsHandCheckedCases) {
  EXPECT_EQ(split("Hello world"), (Pieces{"Hello", " world"}));
  EXPECT_EQ(split("I'm here, they'LL go"), (Pieces{"I", "'m", " here", ",", " they", "'LL", " go"}));
  EXPECT_EQ(split("12345 6"), (Pieces{"123", "45", " ", "6"}));
  EXPECT_EQ(split("a  b"), (Pieces{"a", " ", " b"}));
  EXPECT_EQ(split("a   "), (Pieces{"a", "   "}));
  EXPECT_EQ(split("a\n\nb"), (Pieces{"a", "\n\n", "b"}));
  EXPECT_EQ(split("x   \n y"), (Pieces{"x", "   \n", " y"}));
  EXPECT_EQ(split("hello!!!\n\nnext"), (Pieces{"hello", "!!!\n\n", "next"}));
  EXPECT_EQ(split("f(x) { return $100; }"), (Pieces{"f", "(x", ")", " {", " return", " $", "100", ";", " }"}));
  EXPECT_EQ(split("\xf0\x9f\x98\x80\xf0\x9f\x98\x80 ok"), (Pieces{"\xf0\x9f\x98\x80\xf0\x9f\x98\x80", " ok"}));
  EXPECT_EQ(split("\xe4\xbd\xa0\xe5\xa5\xbd, caf\xc3\xa9"), (Pieces{"\xe4\xbd\xa0\xe5\xa5\xbd", ",", " caf\xc3\xa9"}));
  EXPECT_EQ(split("\tindent"), (Pieces{"\tindent"}));
  EXPECT_EQ(split(""), Pieces{});
}

TEST(data_Bpe, InvalidUtf8BytesArePiecesOfTheirOwn) {
  EXPECT_EQ(split("ab\xff" "cd"), (Pieces{"ab", "\xff", "cd"}));
  EXPECT_EQ(split("x\xe4\xbd y"), (Pieces{"x", "\xe4", "\xbd", " y"}));
  // The invalid byte ends the run for the look-ahead too: "  " then the byte, not " " + " \xff".
  EXPECT_EQ(split("a  \xff"), (Pieces{"a", "  ", "\xff"}));
  EXPECT_EQ(split("\xc0\xaf"), (Pieces{"\xc0", "\xaf"}));
}

TEST(data_Bpe, MergesLowestRankFirstLeftmostOnTies) {
  // ranks: ab 256, bc 257, abc 258, aa 259
  auto tok = tiny({"ab", "bc", "abc", "aa"});
  ASSERT_TRUE(tok);
  // a b c b c: ab(256) first -> [ab c b c]; then bc(257) -> [ab c bc]; then abc(258) -> [abc bc].
  for (bool heap : {false, true}) {
    EXPECT_EQ(tok->merge_piece("abcbc", heap), (std::vector<uint32_t>{258, 257})) << heap;
    EXPECT_EQ(tok->merge_piece("aaa", heap), (std::vector<uint32_t>{259, 'a'})) << heap;      // leftmost
    EXPECT_EQ(tok->merge_piece("aaaa", heap), (std::vector<uint32_t>{259, 259})) << heap;
    EXPECT_EQ(tok->merge_piece("xyz", heap), (std::vector<uint32_t>{'x', 'y', 'z'})) << heap;  // no merges
  }
  // A piece that is a whole token is that token; otherwise merged.
  EXPECT_EQ(tok->encode("abc"), (std::vector<uint32_t>{258}));
  EXPECT_EQ(tok->encode("abcbc"), (std::vector<uint32_t>{258, 257}));
  EXPECT_EQ(tok->encode("abc abc"), (std::vector<uint32_t>{258, ' ', 258}));
  EXPECT_EQ(tok->decode({258, 257}), "abcbc");
}

TEST(data_Bpe, SmallAndHeapMergesAgreeOnRandomPieces) {
  // A denser vocabulary over a 3-letter alphabet, so that long pieces merge many times.
  std::vector<std::string> extra;
  const std::string alphabet = "ab ";
  for (char x : alphabet)
    for (char y : alphabet) extra.push_back(std::string{x, y});
  for (char x : alphabet)
    for (char y : alphabet)
      for (char z : std::string("ab")) extra.push_back(std::string{x, y, z});
  extra.push_back("abab");
  extra.push_back("  ab");
  extra.push_back("baba ");
  auto tok = tiny(extra);
  ASSERT_TRUE(tok);
  SplitMix64 rng(7);
  for (int trial = 0; trial < 2000; ++trial) {
    std::string piece(1 + rng.below(trial < 1000 ? 40 : 300), ' ');
    for (char& c : piece) c = alphabet[rng.below(alphabet.size())];
    const auto small = tok->merge_piece(piece, false);
    const auto heap = tok->merge_piece(piece, true);
    ASSERT_EQ(small, heap) << "piece '" << piece << "'";
    std::string joined;
    for (uint32_t id : heap) joined += tok->token_bytes(id);
    ASSERT_EQ(joined, piece);
  }
}

TEST(data_Bpe, SpecialsOnlyWithEncodeWithSpecials) {
  auto tok = tiny({"ab"});
  ASSERT_TRUE(tok);
  const uint32_t eot = tok->special_id("<|eot_id|>").value();
  EXPECT_EQ(eot, 256u + 1 + 2);
  EXPECT_EQ(tok->bos_id(), 257u);
  EXPECT_EQ(tok->eos_id(), 258u);
  EXPECT_EQ(tok->vocab_size(), 260u);
  EXPECT_FALSE(tok->special_id("<|nope|>").is_ok());
  const std::string text = "ab<|eot_id|>ab<|eot_id|";
  EXPECT_EQ(tok->encode_with_specials(text), (std::vector<uint32_t>{256, eot, 256, '<', '|', 'e', 'o', 't', '_', 'i', 'd', '|'}));
  // encode: special text is ordinary text, so decode (which drops specials) gives it back.
  const auto ordinary = tok->encode(text);
  EXPECT_EQ(std::count(ordinary.begin(), ordinary.end(), eot), 0);
  EXPECT_EQ(tok->decode(ordinary), text);
  EXPECT_EQ(tok->decode(tok->encode_with_specials(text)), "abab<|eot_id|");
  EXPECT_EQ(tok->decode_with_specials(tok->encode_with_specials(text)), text);
  EXPECT_EQ(tok->encode_with_specials("<|begin_of_text|><|end_of_text|>"), (std::vector<uint32_t>{257, 258}));
}

TEST(data_Bpe, RandomBytesRoundTrip) {
  auto tok = tiny({"ab", "bc", "abc", "  ", "\xc3\xa9", "<|", "|>"});
  ASSERT_TRUE(tok);
  const std::vector<std::string> fragments = {"a", "b", "c", " ", "\n", "\r\n", "\xc3\xa9", "\xe4\xbd\xa0", "\xf0\x9f\xa6\x99",
                                              "'s", "123", "<|eot_id|>", "<|begin_of_text|>", "\xff", "\xe4\xbd", "\x80", "\t"};
  SplitMix64 rng(42);
  for (int trial = 0; trial < 3000; ++trial) {
    std::string text;
    const uint64_t n = rng.below(64);
    for (uint64_t i = 0; i < n; ++i) {
      if (rng.below(3) == 0) {
        text += static_cast<char>(rng.below(256));  // arbitrary byte
      } else {
        text += fragments[rng.below(fragments.size())];
      }
    }
    ASSERT_EQ(tok->decode(tok->encode(text)), text) << "trial " << trial;
    ASSERT_EQ(tok->decode_with_specials(tok->encode_with_specials(text)), text) << "trial " << trial;
  }
}

TEST(data_Bpe, TokenizerJsonAndRanksFileAgree) {
  const std::vector<std::string> extra = {"ab", "bc", "abc", " a", " ab"};
  // Merges in the rank order of their results, every split of each token (what tiktoken implies).
  const std::vector<std::pair<std::string, std::string>> merges = {{"a", "b"}, {"b", "c"}, {"ab", "c"}, {"a", "bc"}, {" ", "a"}, {" a", "b"}, {" ", "ab"}};
  auto from_json = BpeTokenizer::from_hf_json(hf_json(extra, merges), "tiny.json");
  ASSERT_TRUE(from_json.is_ok()) << from_json.status().to_string();
  auto from_ranks = tiny(extra);
  ASSERT_TRUE(from_ranks);
  EXPECT_EQ((*from_json)->vocab_size(), from_ranks->vocab_size());
  EXPECT_EQ((*from_json)->num_merges(), 7u);
  SplitMix64 rng(3);
  const std::string alphabet = "abc \n!";
  for (int trial = 0; trial < 500; ++trial) {
    std::string text(rng.below(50), ' ');
    for (char& c : text) c = alphabet[rng.below(alphabet.size())];
    ASSERT_EQ((*from_json)->encode(text), from_ranks->encode(text)) << "'" << text << "'";
  }
}

void expect_one_line_error(const Status& st, const std::string& path, const std::string& cause) {
  ASSERT_FALSE(st.is_ok());
  EXPECT_EQ(st.message().rfind(path, 0), 0u) << "does not start with the path: " << st.message();
  EXPECT_NE(st.message().find(cause), std::string::npos) << st.message();
  EXPECT_EQ(st.message().find('\n'), std::string::npos) << st.message();
  EXPECT_FALSE(st.hint().empty()) << st.message();
}

TEST(data_Bpe, LoadersRefuseBadFilesWithOneLineErrorsNamingTheFile) {
  TempDir dir;
  const std::string missing = dir.path("missing.json");
  expect_one_line_error(BpeTokenizer::load(missing).status(), missing, "cannot open");

  const std::string empty = dir.file("empty.json", "");
  expect_one_line_error(BpeTokenizer::load(empty).status(), empty, "empty file");

  const std::string truncated = dir.file("truncated.json", hf_json({"ab"}, {{"a", "b"}}).substr(0, 300));
  expect_one_line_error(BpeTokenizer::load(truncated).status(), truncated, "malformed tokenizer.json");

  const std::string no_model = dir.file("config.json", R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 128256})");
  expect_one_line_error(BpeTokenizer::load(no_model).status(), no_model, "no \"model\" object");

  const std::string wordpiece = dir.file("wp.json", R"({"model": {"type": "WordPiece", "vocab": {}}})");
  expect_one_line_error(BpeTokenizer::load(wordpiece).status(), wordpiece, "is not supported");

  const std::string bad_merge = dir.file("bad_merge.json", hf_json({"ab"}, {{"a", "b"}, {"x", "q"}}));
  expect_one_line_error(BpeTokenizer::load(bad_merge).status(), bad_merge, "merge 1");

  const std::string text_file = dir.file("notes.txt", "just some text\nnot a ranks file\n");
  expect_one_line_error(BpeTokenizer::load(text_file).status(), text_file, ":1: not a tiktoken ranks line");

  const std::string short_vocab = dir.file("short.tiktoken", "YQ== 0\nYg== 1\n");
  expect_one_line_error(BpeTokenizer::load(short_vocab).status(), short_vocab, "byte 0x00 has no token");

  const std::string duplicate = dir.file("dup.tiktoken", ranks_file({"ab"}) + "YWI= 300\n");
  expect_one_line_error(BpeTokenizer::load(duplicate).status(), duplicate, "appears twice");

  const std::string shard = dir.path("shard.tok");
  ShardWriter writer(shard, 300);
  const uint32_t ids[] = {1, 2, 3};
  writer.append(ids, 3);
  ASSERT_TRUE(writer.finish().is_ok());
  expect_one_line_error(BpeTokenizer::load(shard).status(), shard, "token shard, not a tokenizer");

  // The good files load; a ranks file gets the Llama-3 specials after its last rank.
  auto json_ok = BpeTokenizer::load(dir.file("ok.json", hf_json({"ab"}, {{"a", "b"}})));
  ASSERT_TRUE(json_ok.is_ok()) << json_ok.status().to_string();
  auto ranks_ok = BpeTokenizer::load(dir.file("ok.tiktoken", ranks_file({"ab"})));
  ASSERT_TRUE(ranks_ok.is_ok()) << ranks_ok.status().to_string();
  EXPECT_EQ((*ranks_ok)->bos_id(), 257u);
  EXPECT_EQ((*ranks_ok)->vocab_size(), 257u + 256u);
}

TEST(data_Bpe, MakeTokenizerNamesTheKnownTokenizers) {
  auto bytes = make_tokenizer("bytes");
  ASSERT_TRUE(bytes.is_ok());
  EXPECT_EQ((*bytes)->name(), "bytes");
  auto unknown = make_tokenizer("no-such-tokenizer");
  ASSERT_FALSE(unknown.is_ok());
  EXPECT_NE(unknown.status().hint().find("llama3"), std::string::npos) << unknown.status().hint();
  EXPECT_NE(unknown.status().message().find("no-such-tokenizer"), std::string::npos);
}

}  // namespace
}  // namespace meridian::data
