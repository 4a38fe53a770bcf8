# Shared by scripts/netns-bench.sh and scripts/netns-quickstart.sh (sourced, not run): create
# network namespaces standing in for hosts and wire each to a bridge with a veth pair whose
# both ends are shaped by tc tbf. Everything created is recorded in `netns_created` so that the
# caller's cleanup deletes exactly that (deleting a namespace removes its veths and bridge).

netns_created=()

# netns_add NAME: a namespace with its loopback up.
netns_add() {
  ip netns add "$1"
  netns_created+=("$1")
  ip -n "$1" link set lo up
}

# netns_del_created: deletes every namespace netns_add made (kills what still runs inside).
netns_del_created() {
  local ns pid
  for ns in "${netns_created[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  netns_created=()
}

# netns_add_bridge NS [CIDR]: bridge br0 in NS (with an address when CIDR is given).
netns_add_bridge() {
  ip -n "$1" link add br0 type bridge
  [[ -z "${2:-}" ]] || ip -n "$1" addr add "$2" dev br0
  ip -n "$1" link set br0 up
}

# netns_attach HOST_NS SWITCH_NS VETH CIDR RATE BURST LATENCY: a veth pair VETH"a"/VETH"b"
# (a unique short name), HOST_NS's end renamed eth0 with address CIDR, SWITCH_NS's end on br0;
# uplink (eth0) and downlink (the switch end) each shaped to RATE, like a host on the internet.
netns_attach() {
  local host="$1" sw="$2" veth="$3" cidr="$4" rate="$5" burst="$6" latency="$7"
  ip link add "${veth}a" type veth peer name "${veth}b"
  ip link set "${veth}a" netns "$host"
  ip link set "${veth}b" netns "$sw"
  ip -n "$host" link set "${veth}a" name eth0
  ip -n "$host" addr add "$cidr" dev eth0
  ip -n "$host" link set eth0 up
  ip -n "$sw" link set "${veth}b" master br0
  ip -n "$sw" link set "${veth}b" up
  tc -n "$host" qdisc add dev eth0 root tbf rate "$rate" burst "$burst" latency "$latency"
  tc -n "$sw" qdisc add dev "${veth}b" root tbf rate "$rate" burst "$burst" latency "$latency"
}
