// Reference encoder for the parity test (tests/unit/data_bpe_parity_test.cpp): reads a JSON
// array of base64-encoded byte strings and prints, for each, the Llama-3 token ids computed by
// llama3-tokenizer-js (and, given a ranks file, by the tiktoken npm package):
//   [{"special": [...], "ordinary": [...], "tiktoken": [...]}, ...]
// special:  specials written in the text become their ids (the package's default)
// ordinary: specials are plain text (the package with a special-token regex that never matches)
// tiktoken: tiktoken's encode_ordinary with the same ranks and pattern (Rust regex semantics)
//
// Invalid UTF-8 (the rule of src/data/bpe.h): the bytes are cut into maximal well-formed UTF-8
// runs and single bytes that belong to no well-formed character; runs are encoded on their own,
// each such byte is its byte token.
//
//   node tools/tokenizer/encode.mjs <inputs.json> [llama3.tiktoken]
import fs from 'node:fs';
import { Llama3Tokenizer } from 'llama3-tokenizer-js';

const kPattern = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// Length of the longest well-formed UTF-8 prefix of bytes[i:] (RFC 3629), as in src/data/regex.cpp.
function validPrefix(bytes, i) {
  const start = i;
  while (i < bytes.length) {
    const b0 = bytes[i];
    if (b0 < 0x80) { i++; continue; }
    let len = 0, lo = 0x80, hi = 0xbf;
    if (b0 >= 0xc2 && b0 <= 0xdf) len = 2;
    else if (b0 === 0xe0) { len = 3; lo = 0xa0; }
    else if (b0 === 0xed) { len = 3; hi = 0x9f; }
    else if (b0 >= 0xe1 && b0 <= 0xef) len = 3;
    else if (b0 === 0xf0) { len = 4; lo = 0x90; }
    else if (b0 >= 0xf1 && b0 <= 0xf3) len = 4;
    else if (b0 === 0xf4) { len = 4; hi = 0x8f; }
    else break;
    if (bytes.length - i < len) break;
    if (bytes[i + 1] < lo || bytes[i + 1] > hi) break;
    let ok = true;
    for (let k = 2; k < len; k++) if ((bytes[i + k] & 0xc0) !== 0x80) ok = false;
    if (!ok) break;
    i += len;
  }
  return i - start;
}

// GPT-2 byte-level alphabet: byte -> character.
function byteLevelEncoder() {
  const bs = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  const table = new Array(256);
  bs.forEach((b, i) => { table[b] = String.fromCharCode(cs[i]); });
  return table;
}

const [inputsPath, ranksPath] = process.argv.slice(2);
if (!inputsPath) {
  console.error('usage: node encode.mjs <inputs.json> [llama3.tiktoken]');
  process.exit(2);
}
const tok = new Llama3Tokenizer();
const byteChar = byteLevelEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });
const never = /(?!)/g;

let tiktoken = null;
if (ranksPath) {
  const { Tiktoken } = await import('tiktoken');
  const specials = {};
  for (let id = 128000; id < tok.vocabById.length; id++) specials[tok.vocabById[id]] = id;
  tiktoken = new Tiktoken(fs.readFileSync(ranksPath, 'utf8'), specials, kPattern);
}

const results = [];
for (const b64 of JSON.parse(fs.readFileSync(inputsPath, 'utf8'))) {
  const bytes = Buffer.from(b64, 'base64');
  const special = [], ordinary = [], viaTiktoken = [];
  let i = 0;
  while (i < bytes.length) {
    const valid = validPrefix(bytes, i);
    if (valid === 0) {
      const id = tok.vocabByString.get(byteChar[bytes[i]]);
      special.push(id); ordinary.push(id); viaTiktoken.push(id);
      i++;
      continue;
    }
    const text = decoder.decode(bytes.subarray(i, i + valid));
    special.push(...tok.encode(text, { bos: false, eos: false }));
    ordinary.push(...tok.encode(text, { bos: false, eos: false, specialTokenRegex: never }));
    if (tiktoken) viaTiktoken.push(...tiktoken.encode_ordinary(text));
    i += valid;
  }
  const entry = { special, ordinary };
  if (tiktoken) entry.tiktoken = viaTiktoken;
  results.push(entry);
}
if (tiktoken) tiktoken.free();
process.stdout.write(JSON.stringify(results) + '\n');
