// Tokenizer throughput of the npm packages on one text file, for bench/tokenize/run.sh: the
// tiktoken package (Rust compiled to WASM) with the Llama-3 ranks and pattern, and
// llama3-tokenizer-js (pure JavaScript). Prints one JSON line per tokenizer:
//   {"name": "tiktoken", "bytes": N, "tokens": N, "seconds": s, "mb_per_s": x}
// Best of `repeats` passes on one thread.
//
//   node tools/tokenizer/bench.mjs <text file> <llama3.tiktoken> [repeats=3]
import fs from 'node:fs';
import { Tiktoken } from 'tiktoken';
import { Llama3Tokenizer } from 'llama3-tokenizer-js';

const kPattern = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

const [textPath, ranksPath, repeatsArg] = process.argv.slice(2);
if (!textPath || !ranksPath) {
  console.error('usage: node bench.mjs <text file> <llama3.tiktoken> [repeats=3]');
  process.exit(2);
}
const repeats = Number(repeatsArg ?? 3);
const bytes = fs.readFileSync(textPath);
// The C++ side reads bytes; here the text must be a string (invalid UTF-8 would become U+FFFD,
// so run.sh feeds valid UTF-8 text only).
const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);

function bench(name, encode) {
  let best = Infinity, tokens = 0;
  for (let r = 0; r < repeats; r++) {
    const t0 = process.hrtime.bigint();
    tokens = encode(text).length;
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  console.log(JSON.stringify({ name, bytes: bytes.length, tokens, seconds: +best.toFixed(4), mb_per_s: +(bytes.length / best / 1e6).toFixed(2) }));
}

const llama = new Llama3Tokenizer();
const specials = {};
for (let id = 128000; id < llama.vocabById.length; id++) specials[llama.vocabById[id]] = id;
const tiktoken = new Tiktoken(fs.readFileSync(ranksPath, 'utf8'), specials, kPattern);
bench('tiktoken', (s) => tiktoken.encode_ordinary(s));
tiktoken.free();
bench('llama3-tokenizer-js', (s) => llama.encode(s, { bos: false, eos: false }));
