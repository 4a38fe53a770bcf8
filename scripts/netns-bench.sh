#!/usr/bin/env bash
# Runs bench_allreduce with one peer per network namespace, every peer behind a veth link
# shaped with tc tbf (default 100 Mbit/s, then 1 Gbit/s), and reports each run's efficiency
# against the shaped rate (Meridian with each codec, and Gloo fp32 when the bench was built
# with libtorch).
#
#   sudo scripts/netns-bench.sh [--bench build/bench/allreduce/bench_allreduce] [--peers 4]
#        [--size 16777216] [--rates "100mbit 1gbit"] [--codecs "fp32 int8"] [--iters 3]
#        [--streams 2] [--socket-buffer BYTES] [--window-bytes BYTES] [--chunk-values V] [--no-gloo] [--probe] [--qdisc-stats]
#   --probe also runs the topology probe on each shaped network (every directed link should
#   measure close to the rate) and prints the ring it picks.
#   --qdisc-stats prints, after each run, the packets every tbf sent and dropped during it
#   (uplinks: each peer's eth0; downlinks: the switch side of its veth), to see incast drops.
#
# Topology: a "switch" namespace holds a bridge; peer i's namespace holds one end of a veth
# pair (10.77.0.(i+1)/24), the bridge the other. Both ends are shaped with tbf at the rate,
# so each peer has an uplink and a downlink of exactly that rate, like a host on the internet;
# the switch itself is not a bottleneck. All traffic stays inside these namespaces.
#
# Cleans up on exit (also on error or Ctrl-C): deletes exactly the namespaces it created
# (names prefixed "mrdn-<pid>-"); nothing else is touched. Needs root (ip netns, tc).
set -euo pipefail

bench=""
peers=4
size=$((16 << 20))
rates="100mbit 1gbit"
codecs="fp32 int8"
iters=3
streams=2
extra=()
gloo_flag=""
probe=0
qdisc_stats=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bench) bench="$2"; shift 2 ;;
    --peers) peers="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --rates) rates="$2"; shift 2 ;;
    --codecs) codecs="$2"; shift 2 ;;
    --iters) iters="$2"; shift 2 ;;
    --streams) streams="$2"; shift 2 ;;
    --socket-buffer) extra+=(--socket-buffer "$2"); shift 2 ;;
    --window-bytes) extra+=(--window-bytes "$2"); shift 2 ;;
    --chunk-values) extra+=(--chunk-values "$2"); shift 2 ;;
    --no-gloo) gloo_flag="--no-gloo"; shift ;;
    --probe) probe=1; shift ;;
    --qdisc-stats) qdisc_stats=1; shift ;;
    *) echo "netns-bench: unknown option $1" >&2; exit 2 ;;
  esac
done

here="$(cd "$(dirname "$0")/.." && pwd)"
# The build directory `make` uses; other build trees only by --bench (an old one would measure old code).
if [[ -z "$bench" && -x "$here/build/bench/allreduce/bench_allreduce" ]]; then bench="$here/build/bench/allreduce/bench_allreduce"; fi
if [[ -z "$bench" || ! -x "$bench" ]]; then
  echo "netns-bench: no bench_allreduce binary found" >&2
  echo "hint: build it (cmake --build build --target bench_allreduce) or pass --bench PATH" >&2
  exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "netns-bench: needs root for ip netns and tc" >&2
  echo "hint: run it with sudo" >&2
  exit 2
fi

prefix="mrdn-$$-"
# shellcheck source=scripts/netns-lib.sh
source "$here/scripts/netns-lib.sh"
trap netns_del_created EXIT INT TERM

# tbf needs a bucket of at least one maximal (GSO) packet and enough for the timer tick.
burst_for() {
  case "$1" in
    *gbit) echo "$(( ${1%gbit} * 256 ))kb" ;;
    *) echo "128kb" ;;
  esac
}

# rate in Gbit/s for the efficiency figure: "100mbit" -> 0.1, "1gbit" -> 1
gbit_of() {
  case "$1" in
    *gbit) echo "${1%gbit}" ;;
    *mbit) awk -v m="${1%mbit}" 'BEGIN { print m / 1000 }' ;;
    *) echo "netns-bench: rate $1 must end in mbit or gbit" >&2; exit 2 ;;
  esac
}

setup() {  # $1 = rate
  local rate="$1" burst sw="${prefix}sw"
  burst="$(burst_for "$rate")"
  netns_add "$sw"
  netns_add_bridge "$sw"
  for ((i = 0; i < peers; i++)); do
    netns_add "${prefix}p$i"
    netns_attach "${prefix}p$i" "$sw" "mr$$p$i" "10.77.0.$((i + 1))/24" "$rate" "$burst" 100ms
  done
}

teardown() { netns_del_created; }

# "sent P pkt dropped D overlimits O" of the root tbf on a device in a namespace.
qdisc_counts() {  # $1 = namespace, $2 = device
  tc -s -n "$1" qdisc show dev "$2" | awk '/Sent/ { s = $4; d = $7; sub(",", "", d); o = $9; print s, d, o; exit }'
}

print_qdisc_stats() {  # $1 = label
  local i up down
  echo "   qdisc $1 (packets sent / dropped / overlimits since setup):"
  for ((i = 0; i < peers; i++)); do
    up="$(qdisc_counts "${prefix}p$i" eth0)"
    down="$(qdisc_counts "${prefix}sw" "mr$$p${i}b")"
    echo "     peer $i  uplink $up  downlink $down"
  done
}

run_once() {  # $1 = rate, $2 = codec or "probe"
  local rate="$1" codec="$2" addresses="" pids=() rc=0 mode=()
  if [[ "$codec" == probe ]]; then mode=(--probe); codec=fp32; fi
  for ((i = 0; i < peers; i++)); do addresses+="${addresses:+,}10.77.0.$((i + 1)):29600"; done
  local out
  out="$(mktemp)"
  for ((i = 0; i < peers; i++)); do
    ip netns exec "${prefix}p$i" "$bench" --rank "$i" --addresses "$addresses" --gloo-port 29700 \
      --size "$size" --codec "$codec" --iters "$iters" --streams "$streams" --link-gbit "$(gbit_of "$rate")" \
      $gloo_flag "${mode[@]}" "${extra[@]}" > "$out.$i" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  echo "== rate $rate, $peers peers, ${mode[*]:-codec $codec}"
  cat "$out.0"
  if [[ $qdisc_stats -eq 1 ]]; then print_qdisc_stats "after this run"; fi
  if [[ $rc -ne 0 ]]; then
    for ((i = 1; i < peers; i++)); do sed "s/^/  [rank $i] /" "$out.$i"; done
  fi
  rm -f "$out" "$out".*
  return $rc
}

status=0
for rate in $rates; do
  setup "$rate"
  if [[ $probe -eq 1 ]]; then run_once "$rate" probe || status=1; fi
  for codec in $codecs; do run_once "$rate" "$codec" || status=1; done
  teardown
done
exit $status
