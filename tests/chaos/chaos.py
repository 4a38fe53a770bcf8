#!/usr/bin/env python3
"""Chaos soak of a DiLoCo run: a coordinator and 4 `meridian train --coordinator` nodes on
loopback (tiny preset, H = 5, int8), with seeded faults: SIGKILL, SIGSTOP for 1-12 s then SIGCONT,
and SIGTERM of nodes, SIGKILL + restart of the coordinator on the same port; dead nodes come back
fresh (a new run directory) or with --resume. A node fault leaves at least two nodes running
that trained a round since their launch (holders of the run's state, not joiners that have yet
to download it), so the run's newest state always lives somewhere. The last quarter (at least 30 s) is a quiet tail
without faults.

Usage: chaos.py MERIDIAN_BINARY [--seconds 120] [--seed 1]
At the end it checks, from every node's metrics.jsonl and the coordinator's run log:
  - one outer-parameter hash per round number across all logs (no fork, no round trained twice);
  - every node's rounds only go forward in its log (the run's progress never decreased);
  - no NaN loss;
  - every live node trained rounds in the quiet tail (no hang);
and prints "chaos seed S: F faults injected, R rounds, L rounds lost" and "N passed, N failed".
A failure is replayed with the same --seed (the fault schedule is a function of it).
"""
import argparse
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from meridian_procs import coordinator_address, json_lines, license_shards, read_text, stop_all, write_token  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("bin")
ap.add_argument("--seconds", type=float, default=120)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--nodes", type=int, default=4)
ap.add_argument("--keep", help="keep the work directory here")
args = ap.parse_args()
BIN = os.path.abspath(args.bin)
WORK = tempfile.mkdtemp(prefix="chaos_")
TOKEN = os.path.join(WORK, "token")
rng = random.Random(args.seed)
results = {"passed": 0, "failed": 0}
procs = []


def check(what, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(("ok   " if ok else "FAIL ") + what + ("" if ok or not detail else "\n  " + str(detail)[:3000]), flush=True)
    return ok


def say(t0, text):
    print("%6.1fs %s" % (time.monotonic() - t0, text), flush=True)


def start(log_name, argv):
    log = open(os.path.join(WORK, log_name + ".log"), "a")
    p = subprocess.Popen([BIN] + argv, cwd=WORK, stdout=log, stderr=subprocess.STDOUT)
    procs.append(p)
    return p


def start_coordinator(port, k):
    name = "coord-%d" % k
    p = start(name, ["coordinator", "--listen", "127.0.0.1:%d" % port, "--token-file", TOKEN,
                     "--heartbeat-timeout-ms", "6000", "--log", os.path.join(WORK, "run.jsonl")])
    address = coordinator_address(os.path.join(WORK, name + ".log"), p)
    if address is None:
        raise SystemExit("coordinator did not start: " + read_text(os.path.join(WORK, name + ".log"))[-2000:])
    return p, address


class Node:
    def __init__(self, index):
        self.index = index
        self.incarnation = 0
        self.dir = None
        self.proc = None
        self.frozen_until = None
        self.down_until = None
        self.dirs = []

    def launch(self, coord, resume):
        common = ["--coordinator", coord, "--token-file", TOKEN, "--set", "train.threads=1"]
        if resume and self.dir and os.path.exists(os.path.join(WORK, self.dir, "checkpoints")):
            argv = ["train", "--resume", self.dir] + common
        else:
            self.incarnation += 1
            self.dir = "node%d-%d" % (self.index, self.incarnation)
            self.dirs.append(self.dir)
            argv = ["train", "--preset", "tiny", "--set", "data.train_path=shards/train", "--set", "data.val_path=shards/val",
                    "--set", "run.dir=" + self.dir, "--set", "run.peak_tflops=1", "--set", "train.log_every=50",
                    "--set", "train.steps=1000000", "--set", "train.warmup_steps=5", "--set", "train.eval_every=0",
                    "--set", "train.checkpoint_every=20", "--set", "diloco.enabled=true", "--set", "diloco.inner_steps=5",
                    "--set", "diloco.min_nodes=1", "--set", "diloco.codec=int8"] + common
        self.proc = start("node%d" % self.index, argv)
        self.down_until = None
        self.rounds_at_launch = len(outer_lines(self.dir))

    def trained_since_launch(self):
        # A node holds the run's state once it trained a round in this life: until then it is a
        # joiner (fresh, or resumed from an older checkpoint) and not one of the run's holders.
        return len(outer_lines(self.dir)) > self.rounds_at_launch

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


def setup():
    write_token(TOKEN)
    license_shards(BIN, WORK)


def outer_lines(d):
    return [j for j in json_lines(os.path.join(WORK, d, "metrics.jsonl")) if j.get("type") == "outer"]


def max_round(nodes):
    best = 0
    for n in nodes:
        for d in n.dirs:
            lines = outer_lines(d)
            if lines:
                best = max(best, max(j["round"] for j in lines))
    return best


def run():
    setup()
    t0 = time.monotonic()
    coord_proc, coord = start_coordinator(0, 0)
    port = int(coord.rsplit(":", 1)[1])
    coord_k = 0
    nodes = [Node(i) for i in range(args.nodes)]
    for n in nodes:
        n.launch(coord, resume=False)
    quiet_from = t0 + max(args.seconds * 0.75, args.seconds - max(30.0, args.seconds * 0.25))
    end = t0 + args.seconds
    faults = 0
    next_fault = t0 + 10 + rng.uniform(2, 6)  # let the run start first
    tail_start_rounds = None
    while time.monotonic() < end:
        now = time.monotonic()
        for n in nodes:  # frozen ones thaw, dead ones come back
            if n.frozen_until is not None and now >= n.frozen_until:
                if n.alive():
                    n.proc.send_signal(signal.SIGCONT)
                say(t0, "node%d SIGCONT" % n.index)
                n.frozen_until = None
            if not n.alive() and n.frozen_until is None:
                if n.down_until is None:
                    n.down_until = now + rng.uniform(1, 3)
                elif now >= n.down_until:
                    resume = rng.random() < 0.5
                    n.launch(coord, resume)
                    say(t0, "node%d restarted %s (%s)" % (n.index, "with --resume" if resume else "fresh", n.dir))
        if now >= quiet_from and tail_start_rounds is None:
            tail_start_rounds = {n.index: max_round([n]) for n in nodes}
            say(t0, "quiet tail: no more faults (run at round %d)" % max_round(nodes))
        if now >= next_fault and now < quiet_from:
            next_fault = now + rng.uniform(3, 8)
            # Faults leave at least two holders of the run's state: a run whose every holder is
            # gone has lost its state, which no system recovers (the coordinator waits for one).
            healthy = [n for n in nodes if n.alive() and n.frozen_until is None and n.trained_since_launch()]
            kind = rng.choice(["kill", "kill", "stop", "stop", "term", "coord"])
            if kind == "coord":
                coord_proc.send_signal(signal.SIGKILL)
                coord_proc.wait()
                coord_k += 1
                coord_proc, _ = start_coordinator(port, coord_k)
                say(t0, "coordinator SIGKILLed and restarted on port %d" % port)
                faults += 1
            elif len(healthy) > 2:
                victim = rng.choice(healthy)
                if kind == "kill":
                    victim.proc.send_signal(signal.SIGKILL)
                    say(t0, "node%d SIGKILL" % victim.index)
                elif kind == "term":
                    victim.proc.send_signal(signal.SIGTERM)
                    say(t0, "node%d SIGTERM" % victim.index)
                else:
                    secs = rng.uniform(1, 12)
                    victim.proc.send_signal(signal.SIGSTOP)
                    victim.frozen_until = now + secs
                    say(t0, "node%d SIGSTOP for %.1f s" % (victim.index, secs))
                faults += 1
        time.sleep(0.1)
    for n in nodes:
        if n.frozen_until is not None and n.alive():
            n.proc.send_signal(signal.SIGCONT)
    live = [n for n in nodes if n.alive()]
    tail_end_rounds = {n.index: max_round([n]) for n in nodes}
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()

    # One hash per round across every log; every log goes forward only; no NaN.
    by_round = {}
    backwards = []
    nan = []
    for n in nodes:
        for d in n.dirs:
            lines = outer_lines(d)
            rounds = [j["round"] for j in lines]
            backwards += [(d, a, b) for a, b in zip(rounds, rounds[1:]) if b <= a]
            for j in lines:
                by_round.setdefault(j["round"], set()).add(j["outer_hash"])
                if not math.isfinite(j["loss"]):
                    nan.append((d, j["round"]))
    forks = {r: h for r, h in by_round.items() if len(h) > 1}
    rounds = max(by_round, default=0)
    missing = [r for r in range(1, rounds + 1) if r not in by_round]
    lost = len(forks) + len(backwards)
    check("one outer hash per round across all logs (%d rounds)" % len(by_round), not forks and by_round,
          sorted(forks.items())[:5])
    check("every node's rounds only go forward", not backwards, backwards[:10])
    check("every round from 1 to %d was trained by some node" % rounds, not missing, missing[:10])
    check("no NaN loss", not nan, nan[:5])
    stalled = [n.index for n in live if tail_start_rounds and tail_end_rounds[n.index] <= tail_start_rounds[n.index]]
    check("every live node (%d) trained rounds in the quiet tail" % len(live), live and not stalled,
          {"stalled": stalled, "start": tail_start_rounds, "end": tail_end_rounds})
    events = [e.get("event") for e in json_lines(os.path.join(WORK, "run.jsonl"))]
    check("the run log reports no fork", "fork" not in events, [e for e in events if e == "fork"][:3])
    print("chaos seed %d: %d faults injected, %d rounds, %d rounds lost" % (args.seed, faults, rounds, lost), flush=True)
    return nodes


try:
    run()
except SystemExit as e:
    check("setup", False, str(e))
finally:
    stop_all(procs, WORK, results["failed"], 2500)
    if args.keep:
        shutil.rmtree(args.keep, ignore_errors=True)
        shutil.copytree(WORK, args.keep)
    shutil.rmtree(WORK, ignore_errors=True)
print("%d passed, %d failed" % (results["passed"], results["failed"]))
sys.exit(1 if results["failed"] or not results["passed"] else 0)
