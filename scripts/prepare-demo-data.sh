#!/usr/bin/env bash
# Tokenizes the embedded demo corpus into data/demo/{train,val}: the English text of Debian's
# `fortunes` package (installed by scripts/install-deps.sh), about 2.4 MB in ~15k documents
# separated by "%" lines. Runs once; later calls find the shards and return at once.
set -euo pipefail
build=${1:-build}
out=data/demo
corpus=/usr/share/games/fortunes
if [ -f "$out/train/shard_00000.tok" ] && [ -f "$out/val/shard_00000.tok" ]; then
  exit 0
fi
if [ ! -d "$corpus" ]; then
  echo "error: $corpus not found" >&2
  echo "hint: run scripts/install-deps.sh (it installs Debian's 'fortunes' package)" >&2
  exit 2
fi
# The plain-text fortune files: no extension (the .dat indexes and .u8 links are skipped).
mapfile -t inputs < <(find "$corpus" -maxdepth 1 -type f ! -name '*.*' | sort)
rm -rf "$out.tmp"
"$build/apps/meridian/meridian" tokenize --input "${inputs[@]}" --output "$out.tmp" \
  --doc-separator % --val-fraction 0.02
rm -rf "$out"
mv "$out.tmp" "$out"
