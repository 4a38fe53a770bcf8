#!/usr/bin/env bash
# Runs the C++ side (golden_dump) and the PyTorch side (golden_llama.py) of the golden test.
# Debian's python3-torch lives in /usr/bin/python3; if it is missing, setup installs it.
set -euo pipefail
dump=$1
src=$2
py=/usr/bin/python3
if ! "$py" -c 'import torch' 2>/dev/null; then
  bash "$src/scripts/install-deps.sh"
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$dump" "$dir"
"$py" "$src/tests/golden/golden_llama.py" "$dir"
