// Converts the Llama-3 vocabulary that the npm package llama3-tokenizer-js ships (its own compact
// encoding: base64 vocab lines + 17-bit packed merges) into the two standard formats Meridian
// loads:
//   <out>/tokenizer.json   Hugging Face format: byte-level vocab, merges in rank order,
//                          added_tokens (the 256 specials), the Llama-3 Split regex
//   <out>/llama3.tiktoken  tiktoken ranks: "<base64 token bytes> <rank>" per line
// The data is the package's; this conversion is ours. Outputs are written to temporary names
// and renamed, so an interrupted run never leaves a half file behind.
//
//   node tools/tokenizer/convert.mjs <out dir>
import fs from 'node:fs';
import path from 'node:path';
import { Llama3Tokenizer } from 'llama3-tokenizer-js';

const kPattern = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const kRanked = 128000;   // ordinary tokens; ids 128000..128255 are specials
const kVocab = 128256;
const kMerges = 280147;   // Llama-3's merge count

function fail(message) {
  console.error(`convert.mjs: ${message}`);
  process.exit(1);
}

// GPT-2's byte-level alphabet: character -> byte.
function byteLevelDecoder() {
  const bs = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  }
  const map = new Map();
  bs.forEach((b, i) => map.set(String.fromCharCode(cs[i]), b));
  return map;
}

function writeAtomic(file, text) {
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
}

const outDir = process.argv[2];
if (!outDir) fail('usage: node convert.mjs <out dir>');
fs.mkdirSync(outDir, { recursive: true });

const tok = new Llama3Tokenizer();
const vocab = tok.vocabById;
if (vocab.length !== kVocab) fail(`expected ${kVocab} tokens in llama3-tokenizer-js, found ${vocab.length}`);

// Merges: the package keys them "left right" with priority 2k+1 for merge k; Map keeps insertion
// order, which is rank order, and the priorities confirm it.
const merges = [];
let expected = 1;
for (const [key, prio] of tok.merges) {
  if (prio !== expected) fail(`merge priorities out of order at ${key} (${prio} != ${expected})`);
  merges.push(key);
  expected += 2;
}
if (merges.length !== kMerges) fail(`expected ${kMerges} merges, found ${merges.length}`);

const decoder = byteLevelDecoder();
const vocabObject = {};
const ranksLines = [];
for (let id = 0; id < kRanked; id++) {
  const s = vocab[id];
  vocabObject[s] = id;
  const bytes = Buffer.from(Array.from(s, (c) => {
    const b = decoder.get(c);
    if (b === undefined) fail(`token ${id} has a character outside the byte-level alphabet`);
    return b;
  }));
  ranksLines.push(`${bytes.toString('base64')} ${id}`);
}
if (Object.keys(vocabObject).length !== kRanked) fail('duplicate tokens in the vocabulary');

const addedTokens = [];
for (let id = kRanked; id < kVocab; id++) {
  addedTokens.push({ id, content: vocab[id], single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
}

const tokenizerJson = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: addedTokens,
  normalizer: null,
  pre_tokenizer: {
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', pattern: { Regex: kPattern }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  },
  post_processor: {
    type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [
      { SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
      { SpecialToken: { id: '<|begin_of_text|>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } },
    ],
    special_tokens: { '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [128000], tokens: ['<|begin_of_text|>'] } },
  },
  decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: {
    type: 'BPE',
    dropout: null,
    unk_token: null,
    continuing_subword_prefix: null,
    end_of_word_suffix: null,
    fuse_unk: false,
    byte_fallback: false,
    ignore_merges: true,
    vocab: vocabObject,
    merges,
  },
};

writeAtomic(path.join(outDir, 'llama3.tiktoken'), ranksLines.join('\n') + '\n');
writeAtomic(path.join(outDir, 'tokenizer.json'), JSON.stringify(tokenizerJson));
