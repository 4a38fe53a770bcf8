#!/usr/bin/env bash
# Puts the real Llama-3 vocabulary on disk, offline after the first npm install:
#   data/tokenizers/llama3/tokenizer.json   (Hugging Face format)
#   data/tokenizers/llama3/llama3.tiktoken  (tiktoken ranks)
# converted by tools/tokenizer/convert.mjs from the npm package llama3-tokenizer-js (pinned in
# tools/tokenizer/package-lock.json). Idempotent and quiet when the files are already there and
# newer than the converter and the lock file; `make test` calls it first.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/tools/tokenizer"
out="$root/data/tokenizers/llama3"

up_to_date() {
  local f
  for f in "$out/tokenizer.json" "$out/llama3.tiktoken"; do
    [ -s "$f" ] || return 1
    [ "$f" -nt "$tools/convert.mjs" ] || return 1
    [ "$f" -nt "$tools/package-lock.json" ] || return 1
  done
  [ -d "$tools/node_modules/llama3-tokenizer-js" ] && [ -d "$tools/node_modules/tiktoken" ]
}

if up_to_date; then
  exit 0
fi

# Parallel callers (ctest -j runs each parity test case as its own process) wait for one another.
mkdir -p "$out"
exec 9> "$out/.setup.lock"
flock 9
if up_to_date; then
  exit 0
fi

if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
  echo "setup-tokenizer: node and npm are needed (apt-get install nodejs npm)" >&2
  exit 1
fi

if [ ! -d "$tools/node_modules/llama3-tokenizer-js" ] || [ ! -d "$tools/node_modules/tiktoken" ]; then
  echo "setup-tokenizer: npm ci in tools/tokenizer"
  (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error > /dev/null)
fi

echo "setup-tokenizer: converting llama3-tokenizer-js -> ${out#"$root"/}"
node "$tools/convert.mjs" "$out"
