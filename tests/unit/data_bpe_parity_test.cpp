// Parity with the real Llama-3 tokenizer: Meridian's ids must equal those of the npm package
// llama3-tokenizer-js (and of the tiktoken npm package given the same ranks) on a varied text set:
// English prose, code, numbers, whitespace and newline runs, emoji, CJK, accents, contractions,
// Unicode whitespace oddities, special-token text, invalid UTF-8, and seeded random mixtures.
//
// The reference runs in node (tools/tokenizer/encode.mjs) on the same bytes. The vocabulary comes
// from scripts/setup-tokenizer.sh (data/tokenizers/llama3/), which this test always runs first (quick
// when nothing is missing): it needs node and the npm packages (tools/tokenizer/node_modules, or the npm
// registry once), never the network afterwards.
#include <gtest/gtest.h>

#include "support/test_util.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/hash.h"
#include "data/bpe.h"

namespace meridian::data {
namespace {

using meridian::test_support::base64;

namespace fs = std::filesystem;

const std::string kSourceDir = MERIDIAN_SOURCE_DIR;
const std::string kVocabDir = kSourceDir + "/data/tokenizers/llama3";


std::vector<std::string> hand_written_inputs() {
  return {
      // English prose and contractions
      "The quick brown fox jumps over the lazy dog.",
      "It's a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
      "I'm sure you'll see they've done what we'd said; don't you think? HE'LL COME. She'S here.",
      "Well... \"quoted\" text -- with dashes — and 'single quotes' (parentheses) [brackets] {braces}.",
      // code
      "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
      "#include <vector>\nint main() {\n\tstd::vector<int> v{1, 2, 3};\n\treturn v.size() == 3 ? 0 : 1;\n}\n",
      "const x = (a, b) => a ?? b; // comment\n/* block */ if (x !== undefined) { console.log(`${x}`); }",
      "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%smith%';",
      "    indented with spaces\n\t\ttabs\n  \t mixed",
      // numbers
      "1 12 123 1234 12345 123456 3.14159 -42 +7 1e10 0x1F 1,000,000 2024-11-22 12:30:45",
      "$100.00 €50 ¥1000 100% 3/4 ½ ²³ ⅔ ٣٤٥ ١٢",
      // whitespace and newlines
      "a  b   c    d",
      "trailing spaces   ",
      "   leading spaces",
      "\n\n\nthree newlines then text\n\n",
      "lines\r\nwith\r\nCRLF\r\n\r\n",
      "mixed \t \n \r\n \t\t\n   end",
      " ",
      "\n",
      "",
      "                                                                                                    many spaces",
      // emoji
      "Hello 👋 world 🌍! 🦙🦙🦙 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️",
      "🦙Ꙋ Ꙋ🦙",
      // CJK and other scripts
      "你好，世界！这是一个测试。",
      "日本語のテキストとカタカナ、ひらがな。",
      "한국어 텍스트입니다.",
      "Привет, мир! Ελληνικά. עברית. العربية. हिन्दी।",
      "镇",
      // accents
      "café naïve résumé façade Zürich São Paulo Ångström",
      "e\xcc\x81 (combining acute) vs \xc3\xa9 (precomposed)",
      // Unicode whitespace and case-folding oddities (where JS, Rust and PCRE2 regexes could differ)
      "a\xc2\x85" "b next\xc2\x85line",
      "no\xc2\xa0" "break\xe3\x80\x80ideographic\xe2\x80\xa8line\xe2\x80\xa9para",
      "I'\xc5\xbf ok, don'\xe2\x84\xaa",
      "\xc4\xb0stanbul \xc4\xb1",
      // special-token text: specials for encode_with_specials, plain text for encode
      "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
      "<|reserved_special_token_0|><|reserved_special_token_247|><|reserved_special_token_248|><|eom_id|><|python_tag|>",
      "<|not_special|> <| |> <|eot_id| |eot_id|>",
      // invalid UTF-8
      "abc\xff" "def",
      "\x80\x81\x82",
      "truncated \xe4\xbd and \xf0\x9f\xa6",
      "overlong \xc0\xaf surrogate \xed\xa0\x80 too big \xf4\x90\x80\x80",
      "  \xff  ",
      "\xfe\xff\xfe\xff",
      "caf\xe9 (latin-1)",
  };
}

// Seeded random mixtures of fragments of every kind, with arbitrary bytes sprinkled in.
std::vector<std::string> random_inputs(int count) {
  const std::vector<std::string> fragments = {
      "the", " the", "The", " of", "and", " ", "  ", "   ", "\n", "\n\n", "\r\n", "\t", "'s", "'t", "'re", "'ll", "'D",
      "0", "7", "42", "123", "4567", "3.14", ",", ".", "!", "?", "...", "--", "()", "{}", ";", "=>", "::", "#", "@",
      "é", "ñ", "ü", "ß", "你", "好", "世界", "の", "한", "я", "λ", "🦙", "👋", "🌍", "\xe2\x80\x8d", "\xef\xb8\x8f",
      "\xc2\xa0", "\xe3\x80\x80", "<|eot_id|>", "<|begin_of_text|>", "<|", "|>", "\xff", "\x80", "\xe4\xbd", "\xc3",
      "grabbed", " grabbed", "llama", " Llamas", "HTTP", "https://example.com/a?b=c", "x_y_z", "camelCase", "SCREAMING",
  };
  SplitMix64 rng(2026);
  std::vector<std::string> inputs;
  for (int i = 0; i < count; ++i) {
    std::string text;
    const uint64_t n = 1 + rng.below(40);
    for (uint64_t k = 0; k < n; ++k) {
      if (rng.below(12) == 0) {
        text += static_cast<char>(rng.below(256));
      } else {
        text += fragments[rng.below(fragments.size())];
      }
    }
    inputs.push_back(text);
  }
  return inputs;
}

class BpeParity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Always: the script is quiet and quick when the vocabulary and node packages are in place,
    // and installs whichever of them is missing.
    const std::string cmd = "bash '" + kSourceDir + "/scripts/setup-tokenizer.sh' >&2";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << "scripts/setup-tokenizer.sh failed: it needs node and npm";
    auto from_json = BpeTokenizer::load(kVocabDir + "/tokenizer.json");
    ASSERT_TRUE(from_json.is_ok()) << from_json.status().to_string();
    auto from_ranks = BpeTokenizer::load(kVocabDir + "/llama3.tiktoken");
    ASSERT_TRUE(from_ranks.is_ok()) << from_ranks.status().to_string();
    json_tok_ = std::move(from_json.value()).release();
    ranks_tok_ = std::move(from_ranks.value()).release();
  }
  static void TearDownTestSuite() {
    delete json_tok_;
    delete ranks_tok_;
  }

  // Runs tools/tokenizer/encode.mjs on `inputs`; one JSON object per input.
  static nlohmann::json reference_ids(const std::vector<std::string>& inputs) {
    const fs::path dir = fs::temp_directory_path() / ("meridian_parity_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    nlohmann::json list = nlohmann::json::array();
    for (const auto& s : inputs) list.push_back(base64(s));
    const std::string in_path = (dir / "inputs.json").string();
    std::ofstream(in_path) << list.dump();
    const std::string cmd = "node '" + kSourceDir + "/tools/tokenizer/encode.mjs' '" + in_path + "' '" + kVocabDir + "/llama3.tiktoken'";
    std::string output;
    if (FILE* pipe = ::popen(cmd.c_str(), "r")) {
      char buf[1 << 16];
      for (size_t n; (n = std::fread(buf, 1, sizeof(buf), pipe)) > 0;) output.append(buf, n);
      EXPECT_EQ(::pclose(pipe), 0) << "node failed: " << cmd;
    } else {
      ADD_FAILURE() << "cannot run " << cmd;
    }
    fs::remove_all(dir);
    auto parsed = nlohmann::json::parse(output, nullptr, false);
    EXPECT_TRUE(parsed.is_array() && parsed.size() == inputs.size()) << "reference output: " << output.substr(0, 500);
    return parsed;
  }

  static std::string show(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
      if (c >= 0x20 && c < 0x7f) {
        out += static_cast<char>(c);
      } else {
        char buf[8];
        std::snprintf(buf, sizeof(buf), "\\x%02x", c);
        out += buf;
      }
    }
    return out;
  }

  static void check(const std::vector<std::string>& inputs) {
    const nlohmann::json ref = reference_ids(inputs);
    ASSERT_TRUE(ref.is_array() && ref.size() == inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      const std::string& text = inputs[i];
      const auto ordinary = json_tok_->encode(text);
      EXPECT_EQ(ordinary, ref[i]["ordinary"].get<std::vector<uint32_t>>()) << "llama3-tokenizer-js, input " << i << ": " << show(text);
      EXPECT_EQ(ordinary, ref[i]["tiktoken"].get<std::vector<uint32_t>>()) << "tiktoken, input " << i << ": " << show(text);
      EXPECT_EQ(json_tok_->encode_with_specials(text), ref[i]["special"].get<std::vector<uint32_t>>())
          << "llama3-tokenizer-js with specials, input " << i << ": " << show(text);
      EXPECT_EQ(ranks_tok_->encode(text), ordinary) << "ranks file vs tokenizer.json, input " << i << ": " << show(text);
      EXPECT_EQ(json_tok_->decode(ordinary), text) << "round trip, input " << i;
    }
  }

  static BpeTokenizer* json_tok_;
  static BpeTokenizer* ranks_tok_;
};

BpeTokenizer* BpeParity::json_tok_ = nullptr;
BpeTokenizer* BpeParity::ranks_tok_ = nullptr;

TEST_F(BpeParity, VocabularyShape) {
  EXPECT_EQ(json_tok_->vocab_size(), 128256u);
  EXPECT_EQ(ranks_tok_->vocab_size(), 128256u);
  EXPECT_EQ(json_tok_->num_merges(), 280147u);
  EXPECT_EQ(json_tok_->bos_id(), 128000u);
  EXPECT_EQ(json_tok_->eos_id(), 128001u);
  EXPECT_EQ(json_tok_->special_id("<|start_header_id|>").value(), 128006u);
  EXPECT_EQ(json_tok_->special_id("<|end_header_id|>").value(), 128007u);
  EXPECT_EQ(json_tok_->special_id("<|eot_id|>").value(), 128009u);
  EXPECT_EQ(json_tok_->special_id("<|reserved_special_token_247|>").value(), 128255u);
  // Known ids from the llama3-tokenizer-js and Meta test suites.
  EXPECT_EQ(json_tok_->encode("This is a test sentence."), (std::vector<uint32_t>{2028, 374, 264, 1296, 11914, 13}));
  EXPECT_EQ(json_tok_->encode("           grabbed"), (std::vector<uint32_t>{1881, 30418}));
  EXPECT_EQ(json_tok_->encode("\xf0\x9f\xa6\x99"), (std::vector<uint32_t>{9468, 99, 247}));
}

TEST_F(BpeParity, HandWrittenTextSetMatchesLlama3TokenizerJs) { check(hand_written_inputs()); }

// U+FEFF (zero-width no-break space) is whitespace for JavaScript's \s but not for Unicode's
// White_Space property, which Rust's regex (tiktoken, Hugging Face: the tokenizers Llama-3 was
// trained with) and PCRE2 follow. Meridian follows tiktoken; llama3-tokenizer-js differs here.
TEST_F(BpeParity, ByteOrderMarkFollowsTiktokenNotJavaScriptRegex) {
  const std::vector<std::string> inputs = {"x\xef\xbb\xbf y \xef\xbb\xbfz"};
  const nlohmann::json ref = reference_ids(inputs);
  ASSERT_TRUE(ref.is_array() && ref.size() == 1);
  const auto ids = json_tok_->encode(inputs[0]);
  EXPECT_EQ(ids, ref[0]["tiktoken"].get<std::vector<uint32_t>>());
  EXPECT_EQ(ids, (std::vector<uint32_t>{87, 3305, 379, 76880, 89}));
  EXPECT_NE(ids, ref[0]["ordinary"].get<std::vector<uint32_t>>()) << "llama3-tokenizer-js now agrees: move this input to the main set";
}

TEST_F(BpeParity, RandomMixturesMatchLlama3TokenizerJs) { check(random_inputs(300)); }

TEST_F(BpeParity, LongPiecesMatchAndBothMergeAlgorithmsAgree) {
  // Long single pieces take the heap path: a long word, a long digit-free symbol run, long spaces.
  std::vector<std::string> inputs = {std::string(5000, ' ') + "x", std::string(3000, 'a'), std::string(2000, '-') + "\n",
                                     "Pneumonoultramicroscopicsilicovolcanoconiosis" + std::string(200, 'z') + "abracadabra"};
  std::string mixed;
  SplitMix64 rng(5);
  for (int i = 0; i < 400; ++i) mixed += "qwertyuiopasdfghjklzxcvbnm"[rng.below(26)];
  inputs.push_back(mixed);
  check(inputs);
  for (const auto& piece : inputs) {
    ASSERT_EQ(json_tok_->merge_piece(piece.substr(0, 600), false), json_tok_->merge_piece(piece.substr(0, 600), true));
  }
}

TEST_F(BpeParity, RandomBytesRoundTrip) {
  SplitMix64 rng(11);
  for (int trial = 0; trial < 500; ++trial) {
    std::string text(rng.below(300), '\0');
    for (char& c : text) c = static_cast<char>(rng.below(256));
    ASSERT_EQ(json_tok_->decode(json_tok_->encode(text)), text) << "trial " << trial;
    ASSERT_EQ(json_tok_->decode_with_specials(json_tok_->encode_with_specials(text)), text) << "trial " << trial;
  }
}

}  // namespace
}  // namespace meridian::data
