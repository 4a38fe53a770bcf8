#!/usr/bin/env bash
# Inner-step throughput, side by side on this machine: `meridian bench step` (C++/libtorch)
# against the same model and step in PyTorch (Python, Debian's python3-torch). Runs each twice,
# alternating, and prints both and the ratio of the better runs. With NPROC > 1 both sides run
# NPROC ranks of batch_size rows each, the cores split among them: meridian shards the model
# (`--nproc-per-node`, FSDP over Gloo), PyTorch replicates it (DistributedDataParallel over Gloo;
# see step_torch.py for why not its FSDP). Usage:
#   bench/bench_step.sh [BUILD_DIR] [PRESET] [STEPS] [NPROC]
set -euo pipefail
build=${1:-build}
preset=${2:-debug}
steps=${3:-10}
nproc=${4:-1}
bin=$build/apps/meridian/meridian
threads=$(nproc)
# The same OpenMP wait policy for both sides (meridian defaults to PASSIVE, see apps/meridian/main.cpp).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
shape=$("$bin" config --preset "$preset" | /usr/bin/python3 -c '
import sys, tomllib, json
c = tomllib.loads(sys.stdin.read())
m, t = c["model"], c["train"]
print(json.dumps({**{k: m[k] for k in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "rope_theta", "norm_eps", "max_seq_len")},
                  "batch_size": t["batch_size"], "seq_len": t["seq_len"]}))')
best_ours=0
best_torch=0
for round in 1 2; do
  ours=$("$bin" bench step --preset "$preset" --steps "$steps" --nproc-per-node "$nproc" \
           --set train.threads=$((threads / nproc > 0 ? threads / nproc : 1)) | grep '^{')
  theirs=$(/usr/bin/python3 bench/step_torch.py --config "$shape" --steps "$steps" --threads "$threads" --nproc "$nproc")
  echo "round $round meridian: $ours"
  echo "round $round pytorch:  $theirs"
  best_ours=$(echo "$ours" | /usr/bin/python3 -c "import sys, json; print(max($best_ours, json.load(sys.stdin)['tokens_per_s']))")
  best_torch=$(echo "$theirs" | /usr/bin/python3 -c "import sys, json; print(max($best_torch, json.load(sys.stdin)['tokens_per_s']))")
done
/usr/bin/python3 -c "print(f'inner step, preset $preset, $nproc rank(s), $threads threads, OMP_WAIT_POLICY=$OMP_WAIT_POLICY: meridian {$best_ours:.0f} tok/s, pytorch {$best_torch:.0f} tok/s, ratio {$best_ours / $best_torch:.2f}x (target >= 1.0x)')"
