#!/usr/bin/env bash
# Tokenizer throughput, side by side on the same text: Meridian's BPE (one thread, and
# tokenize_files on all cores) vs the tiktoken npm package (Rust/WASM, one thread) and
# llama3-tokenizer-js, all with the Llama-3 vocabulary. Prints MB/s and the ratios.
#
#   bench/tokenize/run.sh [build dir=build] [MB of text=16]
# The text is the English prose of the `fortunes` Debian package (documents separated by lines
# "%"), repeated to the requested size; the ids of both tokenizers are compared too.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-$root/build}"
megabytes="${2:-16}"
bin="$build/bench/tokenize/bench_tokenize"
vocab="$root/data/tokenizers/llama3"

[ -x "$bin" ] || { echo "run.sh: $bin missing: cmake --build $build --target bench_tokenize" >&2; exit 1; }
"$root/scripts/setup-tokenizer.sh"

corpus="$(mktemp -t meridian_bench_corpus.XXXXXX.txt)"
trap 'rm -f "$corpus"' EXIT
fortunes=(/usr/share/games/fortunes/*)
base="$(mktemp)"
for f in "${fortunes[@]}"; do
  case "$f" in *.dat|*.u8) continue ;; esac
  iconv -f utf-8 -t utf-8 -c "$f" 2>/dev/null >> "$base" || true
done
[ -s "$base" ] || { echo "run.sh: no text in /usr/share/games/fortunes (apt-get install fortunes)" >&2; exit 1; }
while [ "$(stat -c %s "$corpus")" -lt $((megabytes * 1000000)) ]; do cat "$base" >> "$corpus"; done
rm -f "$base"

echo "corpus: $(stat -c %s "$corpus") bytes of fortunes text, Llama-3 vocabulary, $(nproc) cores"
meridian="$("$bin" "$vocab/tokenizer.json" "$corpus" 3)"
node_out="$(node "$root/tools/tokenizer/bench.mjs" "$corpus" "$vocab/llama3.tiktoken" 3)"

python3 - "$meridian" "$node_out" <<'PY'
import json, sys
m = [json.loads(l) for l in sys.argv[1].splitlines()]
n = {d["name"]: d for d in map(json.loads, sys.argv[2].splitlines())}
one, many, tik, js = m[0], m[1], n["tiktoken"], n["llama3-tokenizer-js"]
rows = [("meridian, 1 thread", one), ("meridian, 1 thread, cold piece cache", dict(one, mb_per_s=one["cold_mb_per_s"])), (f"meridian tokenize_files, {many['threads']} threads", many),
        ("tiktoken (npm, 1 thread)", tik), ("llama3-tokenizer-js (1 thread)", js)]
print(f"{'tokenizer':<40} {'MB/s':>8} {'tokens':>12}")
for name, d in rows:
    print(f"{name:<40} {d['mb_per_s']:>8.2f} {d['tokens']:>12}")
print(f"ratio meridian/tiktoken, 1 thread: {one['mb_per_s'] / tik['mb_per_s']:.2f}x; "
      f"all cores: {many['mb_per_s'] / tik['mb_per_s']:.2f}x")
if one["tokens"] != tik["tokens"]:
    print(f"WARNING: token counts differ (meridian {one['tokens']}, tiktoken {tik['tokens']})")
PY
