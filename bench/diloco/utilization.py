#!/usr/bin/env python3
"""Compute utilization of DiLoCo with and without overlap (diloco.overlap), side by side.

N nodes (default 4), each in a network namespace of its own wired to a bridge by a veth pair
shaped with tc tbf in both directions (scripts/netns-lib.sh's topology), a coordinator on the
bridge. For each mode (none, delayed, eager) a fresh set of namespaces and the same run: the
same model, data, steps and link rate. Per mode it prints, from the nodes' metrics.jsonl:

  utilization   inner-step seconds / wall seconds of the round windows (first and last rounds
                left out: the first waits for every node, the last is never overlapped);
                "median rd": the median round's
  waited        seconds per round the inner steps stood still for the pseudo-gradient
                all-reduce (the whole all-reduce without overlap)
  all-reduce    seconds per round the all-reduce took (in the background with overlap)
  sync/compute  (window - compute) / compute; for `none` this is the ratio INTELLECT-1 had
                (0.21 in its global setting, where it reached 83%)
  tokens/s      per node, over the same windows, and against a compute-only baseline: the same
                N processes training side by side with nothing to send (they share the CPU as
                the nodes do). On a machine with fewer cores than nodes this is the honest
                figure: a node that waits frees the CPU for the others, which makes their
                inner steps faster, so compute / window alone flatters the blocking mode

  sudo python3 bench/diloco/utilization.py [--rate 16mbit] [--burst 32kb] [--nodes 4] [--steps 400] [--H 20]
      [--modes none,delayed,eager] [--preset tiny] [--codec int8] [--bin build/apps/meridian/meridian]

Needs root (ip netns, tc). Every namespace it creates is deleted at the end, also on error.
The model and rate are chosen so that the blocking mode's sync/compute is near 0.21 on a
2-core machine; pass --rate to move it (halving the rate about doubles the ratio).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts"))
from meridian_procs import json_lines, license_shards, write_token  # noqa: E402

INTELLECT1_UTILIZATION = 0.83  # its global setting, sync/compute 0.21 (INTELLECT-1 report)


def sh(*args):
    subprocess.run(list(args), check=True)


class Hosts:
    """Namespaces standing in for hosts: a switch namespace with bridge br0 (10.78.0.1) and
    one namespace per node (10.78.0.2...) on a veth pair shaped in both directions."""

    def __init__(self, n, rate, burst):
        self.prefix = "mu%d-" % os.getpid()
        self.created = []
        self.switch = self.add("sw")
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "addr", "add", "10.78.0.1/24", "dev", "br0")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        self.nodes = []
        for i in range(n):
            ns = self.add("n%d" % i)
            veth = "%sv%d" % (self.prefix.replace("-", ""), i)
            sh("ip", "link", "add", veth + "a", "type", "veth", "peer", "name", veth + "b")
            sh("ip", "link", "set", veth + "a", "netns", ns)
            sh("ip", "link", "set", veth + "b", "netns", self.switch)
            sh("ip", "-n", ns, "link", "set", veth + "a", "name", "eth0")
            sh("ip", "-n", ns, "addr", "add", "10.78.0.%d/24" % (i + 2), "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", self.switch, "link", "set", veth + "b", "master", "br0")
            sh("ip", "-n", self.switch, "link", "set", veth + "b", "up")
            for where, dev in ((ns, "eth0"), (self.switch, veth + "b")):
                sh("tc", "-n", where, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", burst, "latency", "50ms")
            self.nodes.append((ns, "10.78.0.%d" % (i + 2)))

    def add(self, name):
        ns = self.prefix + name
        sh("ip", "netns", "add", ns)
        self.created.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def delete(self):
        for ns in self.created:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created = []


def pin(i):
    """Node i runs on core i mod the cores, so that the nodes share the CPU evenly (a node that
    gets less than the others is a straggler every round waits for, which is not what this
    benchmark measures)."""
    return ["taskset", "-c", str(i % os.cpu_count())]


def run_compute_only(args, work):
    """The baseline: the same N processes training side by side with nothing to meet or send
    (diloco.enabled=false), so that they share the CPU as the DiLoCo nodes do. Returns tokens/s
    per node over the same steps."""
    procs = []
    for i in range(args.nodes):
        log = open(os.path.join(work, "compute-n%d.log" % i), "w")
        procs.append(subprocess.Popen(
            pin(i) + [args.bin, "train", "--preset", args.preset, "--set", "data.train_path=" + os.path.join(work, "shards", "train"),
             "--set", "data.val_path=" + os.path.join(work, "shards", "val"), "--set", "run.dir=" + os.path.join(work, "compute-n%d" % i),
             "--set", "run.peak_tflops=1", "--set", "train.threads=1", "--set", "train.log_every=1",
             "--set", "train.eval_every=0", "--set", "train.steps=%d" % args.steps, "--set", "train.seed=%d" % (i + 1)],
            stdout=log, stderr=subprocess.STDOUT))
    if any(p.wait() for p in procs):
        raise SystemExit("utilization: a compute-only process failed; logs in %s" % work)
    rates = []
    for i in range(args.nodes):
        steps = [j for j in json_lines(os.path.join(work, "compute-n%d" % i, "metrics.jsonl")) if j.get("type") == "inner"]
        steps = steps[args.H:-args.H]  # as the DiLoCo windows: without the first and last rounds
        rates.append(len(steps) * args.batch * args.seq / sum(j["step_s"] for j in steps))
    return sum(rates) / len(rates)


def run_mode(args, mode, work):
    hosts = Hosts(args.nodes, args.rate, args.burst)
    procs = []
    try:
        coord_log = open(os.path.join(work, mode + "-coord.log"), "w")
        procs.append(subprocess.Popen(["ip", "netns", "exec", hosts.switch, args.bin, "coordinator", "--listen", "10.78.0.1:29600",
                                       "--token-file", os.path.join(work, "token")], stdout=coord_log, stderr=subprocess.STDOUT))
        time.sleep(1.0)
        for i, (ns, ip) in enumerate(hosts.nodes):
            log = open(os.path.join(work, "%s-n%d.log" % (mode, i)), "w")
            cmd = ["timeout", str(args.deadline_s), "ip", "netns", "exec", ns] + pin(i) + [args.bin, "train", "--preset", args.preset,
                   "--set", "data.train_path=" + os.path.join(work, "shards", "train"),
                   "--set", "data.val_path=" + os.path.join(work, "shards", "val"),
                   "--set", "run.dir=" + os.path.join(work, "%s-n%d" % (mode, i)), "--set", "run.peak_tflops=1",
                   "--set", "train.threads=1", "--set", "train.log_every=1000", "--set", "train.eval_every=0",
                   "--set", "train.steps=%d" % args.steps, "--set", "diloco.enabled=true",
                   "--set", "diloco.inner_steps=%d" % args.H, "--set", "diloco.min_nodes=%d" % args.nodes,
                   "--set", "diloco.codec=" + args.codec, "--set", "diloco.overlap=" + mode,
                   "--coordinator", "10.78.0.1:29600", "--token-file", os.path.join(work, "token"), "--listen", ip + ":0"]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        codes = [p.wait() for p in procs[1:]]
        if any(codes):
            raise SystemExit("utilization: a node of mode %s failed (exit codes %s); logs in %s" % (mode, codes, work))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        hosts.delete()
    return summarize(args, mode, work)


def summarize(args, mode, work):
    per_node = []
    for i in range(args.nodes):
        rounds = {}
        for j in json_lines(os.path.join(work, "%s-n%d" % (mode, i), "metrics.jsonl")):
            if j.get("type") == "outer":
                rounds[j["round"]] = j
        keys = sorted(rounds)[1:-1]
        if not keys:
            raise SystemExit("utilization: too few rounds in mode %s (raise --steps)" % mode)
        hashes = {r: rounds[r]["outer_hash"] for r in rounds}
        compute = sum(rounds[r]["compute_s"] for r in keys)
        window = sum(rounds[r]["round_s"] for r in keys)
        per_round = sorted(rounds[r]["compute_s"] / rounds[r]["round_s"] for r in keys)
        per_node.append({"compute": compute, "window": window, "rounds": len(keys), "hashes": hashes,
                         "median": per_round[len(per_round) // 2],
                         "waited": sum(rounds[r]["wait_s"] for r in keys) / len(keys),
                         "all_reduce": sum(rounds[r]["all_reduce_s"] for r in keys) / len(keys),
                         "bits": sum(rounds[r]["bits_per_param_step"] for r in keys) / len(keys)})
    agree = all(n["hashes"] == per_node[0]["hashes"] for n in per_node)
    compute = sum(n["compute"] for n in per_node)
    window = sum(n["window"] for n in per_node)
    tokens_per_round = args.H * args.batch * args.seq
    return {"mode": mode, "utilization": compute / window, "median": sum(n["median"] for n in per_node) / len(per_node), "sync_per_compute": (window - compute) / compute,
            "waited": sum(n["waited"] for n in per_node) / len(per_node),
            "all_reduce": sum(n["all_reduce"] for n in per_node) / len(per_node),
            "bits": per_node[0]["bits"], "hashes_agree": agree,
            "tokens_per_s": sum(n["rounds"] * tokens_per_round / n["window"] for n in per_node) / len(per_node)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "..", "build", "apps", "meridian", "meridian"))
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--rate", default="16mbit")
    # Small against a round's volume, so that the shaping holds for the whole all-reduce.
    ap.add_argument("--burst", default="32kb")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--H", type=int, default=20)
    ap.add_argument("--codec", default="int8")
    ap.add_argument("--modes", default="none,delayed,eager")
    ap.add_argument("--deadline-s", type=int, default=900)
    ap.add_argument("--keep", help="keep logs and run directories here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("utilization: needs root for ip netns and tc; run it with sudo")
    args.bin = os.path.abspath(args.bin)
    if not os.access(args.bin, os.X_OK):
        raise SystemExit("utilization: %s not found; build it first (cmake --build build)" % args.bin)
    info = json.loads(subprocess.run([args.bin, "info", "--model", args.preset], capture_output=True, text=True, check=True).stdout)
    args.batch, args.seq = info.get("batch_size", 8), info.get("seq_len", 64)
    work = args.keep or tempfile.mkdtemp(prefix="meridian-utilization-")
    os.makedirs(work, exist_ok=True)
    write_token(os.path.join(work, "token"))
    license_shards(args.bin, work)
    print("# %d nodes, preset %s (%d parameters), H = %d, %d steps, codec %s, every link shaped to %s both ways"
          % (args.nodes, args.preset, info["params"], args.H, args.steps, args.codec, args.rate))
    t0 = time.time()
    baseline = run_compute_only(args, work)
    print("# compute only (%d processes, nothing sent) done in %.0f s: %.0f tokens/s per process" % (args.nodes, time.time() - t0, baseline),
          flush=True)
    results = []
    for mode in args.modes.split(","):
        t0 = time.time()
        r = run_mode(args, mode, work)
        results.append(r)
        print("# %s done in %.0f s" % (mode, time.time() - t0), flush=True)
    print("%-8s %12s %11s %16s %10s %14s %13s %11s %16s %7s" % ("mode", "utilization", "median rd", "vs compute-only", "waited/rd",
                                                                 "all-reduce/rd", "sync/compute", "tok/s/node", "bits/param/step", "hashes"))
    for r in results:
        r["vs_compute_only"] = r["tokens_per_s"] / baseline
        print("%-8s %11.1f%% %10.1f%% %15.1f%% %9.3fs %13.3fs %13.3f %11.0f %16.3f %7s" % (
            r["mode"], 100 * r["utilization"], 100 * r["median"], 100 * r["vs_compute_only"], r["waited"], r["all_reduce"], r["sync_per_compute"],
            r["tokens_per_s"], r["bits"], "agree" if r["hashes_agree"] else "DIFFER"))
    print("INTELLECT-1 (global, sync/compute 0.21, blocking): %.0f%%" % (100 * INTELLECT1_UTILIZATION))
    print("tokens/s against the compute-only baseline:")
    for r in results:
        bar = "#" * int(round(50 * min(1.0, r["vs_compute_only"])))
        print("%-8s |%-50s| %.1f%%" % (r["mode"], bar, 100 * r["vs_compute_only"]))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["hashes_agree"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
