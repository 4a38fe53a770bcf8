#!/usr/bin/env bash
# Multi-machine quickstart on one machine: a coordinator and two DiLoCo nodes, each in its own
# Linux network namespace standing in for a host, train the tiny preset together; then checks
# that both nodes hold the same outer weights (equal "outer_hash") after every outer round.
#
#   sudo bash scripts/netns-quickstart.sh [BUILD_DIR]      (BUILD_DIR defaults to build)
#
# Topology (private subnet 10.77.0.0/24, nothing outside these namespaces is touched):
#   mq-<pid>-coord  bridge br0 10.77.0.1  runs `meridian coordinator` on 10.77.0.1:29500
#   mq-<pid>-n1     eth0 10.77.0.2        node 1, veth to br0
#   mq-<pid>-n2     eth0 10.77.0.3        node 2, veth to br0
# Each node link is shaped with tc tbf (100 Mbit/s, both directions). Node-to-node (mesh)
# traffic crosses the bridge but not the coordinator process.
#
# Always cleans up (also on error or Ctrl-C): kills the processes it started, deletes the
# namespaces (which removes the bridge and the veths) and the temp dir (KEEP=1 keeps the temp
# dir: node logs, run dirs, the coordinator's run.jsonl). Exits non-zero when a node fails or
# the hashes differ. Needs root (ip netns, tc). Env: RATE (default 100mbit), DEADLINE_S (300),
# PRESET (tiny), STEPS (60), JOINER=1: a third host (mq-<pid>-n3, 10.77.0.4) starts once node 1
# finished round 2, joins at the next round start and trains to the end; the script prints the
# state it received and its download rate against the shaped rate, and checks its hashes too.
set -euo pipefail

build="${1:-build}"
here="$(cd "$(dirname "$0")/.." && pwd)"
[[ "$build" = /* ]] || build="$here/$build"
meridian="$build/apps/meridian/meridian"
if [[ ! -x "$meridian" ]]; then
  echo "netns-quickstart: $meridian not found" >&2
  echo "hint: build it first (cmake --build $build --target meridian) or pass the build dir" >&2
  exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "netns-quickstart: needs root for ip netns and tc; run it with sudo" >&2
  exit 2
fi
for tool in ip tc python3 timeout; do
  command -v "$tool" >/dev/null || { echo "netns-quickstart: $tool not found" >&2; exit 2; }
done

rate="${RATE:-100mbit}"
node_deadline_s="${DEADLINE_S:-300}"
prefix="mq-$$-"
ns_coord="${prefix}coord"
preset="${PRESET:-tiny}"
steps="${STEPS:-60}"
ns_nodes=("${prefix}n1" "${prefix}n2")
ips=(10.77.0.2 10.77.0.3)
if [[ "${JOINER:-0}" == 1 ]]; then ns_nodes+=("${prefix}n3"); ips+=(10.77.0.4); fi
nodes=${#ns_nodes[@]}
coord_addr=10.77.0.1:29500

tmp="$(mktemp -d /tmp/meridian-netns-quickstart.XXXXXX)"
# shellcheck source=scripts/netns-lib.sh
source "$here/scripts/netns-lib.sh"
pids=()
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  netns_del_created  # also kills anything still running inside them (started by us)
  if [[ "${KEEP:-0}" == 1 ]]; then echo "netns-quickstart: kept $tmp (logs, run dirs, run.jsonl)"; else rm -rf "$tmp"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== setting up namespaces ${prefix}coord and $nodes node namespaces on 10.77.0.0/24 (links shaped to $rate)"
netns_add "$ns_coord"
netns_add_bridge "$ns_coord" 10.77.0.1/24
for ((i = 0; i < nodes; i++)); do
  netns_add "${ns_nodes[$i]}"
  netns_attach "${ns_nodes[$i]}" "$ns_coord" "mq$$n$i" "${ips[$i]}/24" "$rate" 256kb 50ms
done
for ((i = 0; i < nodes; i++)); do
  command -v ping >/dev/null || break   # optional sanity check
  ip netns exec "${ns_nodes[$i]}" ping -c 1 -W 2 10.77.0.1 >/dev/null ||
    { echo "netns-quickstart: ${ns_nodes[$i]} cannot reach 10.77.0.1" >&2; exit 1; }
done

echo "== tokenizing /usr/share/common-licenses/GPL-3 (one document per paragraph)"
# A .txt file is one document unless --doc-separator splits it; with one document the 5%
# validation share rounds to nothing, so mark every blank line as a document boundary.
corpus=/usr/share/common-licenses/GPL-3
if [[ ! -f "$corpus" ]]; then echo "netns-quickstart: $corpus not found" >&2; exit 2; fi
awk 'NR > 1 && /^$/ { print "@@DOC@@" } { print }' "$corpus" > "$tmp/gpl3.txt"
"$meridian" tokenize --input "$tmp/gpl3.txt" --output "$tmp/data" --val-fraction 0.05 \
  --doc-separator '@@DOC@@' --threads 1

head -c 32 /dev/urandom | base64 > "$tmp/run.token"
chmod 600 "$tmp/run.token"

echo "== starting the coordinator in $ns_coord"
ip netns exec "$ns_coord" "$meridian" coordinator --listen "$coord_addr" \
  --token-file "$tmp/run.token" --log "$tmp/run.jsonl" > "$tmp/coord.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  grep -q "listening on" "$tmp/coord.log" && break
  kill -0 "${pids[0]}" 2>/dev/null || break
  sleep 0.2
done
if ! grep -q "listening on" "$tmp/coord.log"; then
  echo "netns-quickstart: the coordinator did not start:" >&2; cat "$tmp/coord.log" >&2; exit 1
fi
sed 's/^/  [coord] /' "$tmp/coord.log"

start_node() {  # $1 = index into ns_nodes
  local i="$1" n=$(($1 + 1))
  timeout "$node_deadline_s" ip netns exec "${ns_nodes[$i]}" "$meridian" train --preset "$preset" \
    --set data.train_path="$tmp/data/train" --set data.val_path="$tmp/data/val" \
    --set run.dir="$tmp/n$n" --set run.peak_tflops=1 --set train.threads=1 \
    --set diloco.enabled=true --set diloco.inner_steps=10 --set train.steps="$steps" \
    --set diloco.min_nodes=2 \
    --coordinator "$coord_addr" --token-file "$tmp/run.token" --listen "${ips[$i]}:0" \
    > "$tmp/n$n.log" 2>&1 &
  node_pids+=($!)
  pids+=($!)
}

echo "== starting node 1 (${ips[0]}) and node 2 (${ips[1]}), preset $preset, $steps steps; deadline ${node_deadline_s}s"
node_pids=()
start_node 0
start_node 1
if [[ $nodes -eq 3 ]]; then
  for _ in $(seq $((node_deadline_s * 5))); do
    grep -qE "^outer +round +2 " "$tmp/n1.log" && break
    kill -0 "${node_pids[0]}" 2>/dev/null || break
    sleep 0.2
  done
  echo "== node 1 finished round 2: starting node 3 (${ips[2]}), which joins at the next round start"
  start_node 2
fi
status=0
for ((i = 0; i < nodes; i++)); do
  rc=0
  wait "${node_pids[$i]}" || rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "netns-quickstart: node $((i + 1)) exited with $rc$( [[ $rc -eq 124 ]] && echo " (deadline)")" >&2
    status=1
  fi
done

for ((n = 1; n <= nodes; n++)); do
  echo "== node $n: outer rounds (full log: its stdout)"
  grep -E "^outer +round" "$tmp/n$n.log" | sed "s/^/  [n$n] /" || true
  if [[ $status -ne 0 ]]; then tail -n 20 "$tmp/n$n.log" | sed "s/^/  [n$n log] /"; fi
done

echo "== checking outer_hash per round in every node's metrics.jsonl"
metrics=()
for ((n = 1; n <= nodes; n++)); do metrics+=("$tmp/n$n/metrics.jsonl"); done
PYTHONPATH="$here/scripts" python3 - "${metrics[@]}" <<'EOF' || status=1
import sys
from meridian_procs import outer_rounds

nodes = [outer_rounds(path) for path in sys.argv[1:]]
# Nodes 1 and 2 train every round; a joiner (node 3) from the round it was admitted.
ok = bool(nodes[0]) and nodes[0].keys() == nodes[1].keys()
print("  " + ", ".join(f"node {i + 1}: {len(r)} outer rounds" for i, r in enumerate(nodes)))
for r in sorted(set().union(*(n.keys() for n in nodes))):
    hashes = [n.get(r, {}).get("outer_hash", "-") for n in nodes]
    present = [h for h in hashes if h != "-"]
    same = len(present) >= 2 and len(set(present)) == 1
    ok = ok and same
    print(f"  round {r:>3}  " + "  ".join(f"n{i + 1} {h}" for i, h in enumerate(hashes)) + ("  equal" if same else "  DIFFERENT"))
if len(nodes) == 3:
    first = min(nodes[2], default=None)
    joined = first is not None and bool(nodes[2][first].get("joined")) and max(nodes[2]) == max(nodes[0])
    members_idle = first is not None and all(n.get(first, {}).get("state_bytes_downloaded") == 0 for n in nodes[:2])
    print(f"  node 3 joined at round {first}: {'yes' if joined else 'NO'}; "
          f"nodes 1 and 2 downloaded nothing that round: {'yes' if members_idle else 'NO'}")
    ok = ok and joined and members_idle
print(f"  PASS: all {len(nodes)} nodes hold the same outer weights after every round they trained" if ok
      else "  FAIL: the nodes' outer hashes differ or are missing")
sys.exit(0 if ok else 1)
EOF

if [[ $nodes -eq 3 ]]; then
  echo "== what node 3 received (links shaped to $rate)"
  grep -E "^# received" "$tmp/n3.log" | sed 's/^/  [n3] /' || true
  grep -E "^# received" "$tmp/n3.log" | sed -nE 's/.* ([0-9.]+) MB in ([0-9.]+) s .*/\1 \2/p' | while read -r mb secs; do
    awk -v mb="$mb" -v s="$secs" -v r="$rate" 'BEGIN {
      shaped = r ~ /gbit$/ ? 1000 * r : (r ~ /mbit$/ ? r + 0 : 0)
      if (shaped > 0 && s > 0) printf "  %.2f MB in %.3f s = %.1f Mbit/s, %.1f%% of the shaped %s\n", mb, s, 8 * mb / s, 100 * 8 * mb / s / shaped, r }'
  done
fi

echo "== coordinator run log ($tmp/run.jsonl)"
if [[ -f "$tmp/run.jsonl" ]]; then
  echo "  $(wc -l < "$tmp/run.jsonl") records; events:"
  python3 -c '
import json, sys, collections
c = collections.Counter()
for line in open(sys.argv[1]):
    if line.strip():
        c[json.loads(line).get("event", "?")] += 1
print("  " + ", ".join(f"{k} x{v}" for k, v in c.items()))
' "$tmp/run.jsonl" || true
fi

if [[ $status -eq 0 ]]; then echo "== PASS"; else echo "== FAIL"; fi
exit $status
