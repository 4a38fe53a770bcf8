#!/usr/bin/env python3
"""The decentralized demo (`make demo`): a coordinator and 3 DiLoCo nodes as separate processes
on this machine train the embedded demo model with int8 pseudo-gradients. After round 2 one node
is SIGKILLed and a new one starts; it joins at the next round start and catches up from the
others. Beside them, one node trains alone on the same settings for comparison.

Prints a live table (one row per round) and a summary: validation loss against the lone node,
compute utilization, bytes sent against what data parallel would have sent, recovery events.
Every process's output and metrics stay in the run directory (default runs/demo).

Usage: python3 scripts/demo.py [--bin build/apps/meridian/meridian] [--dir runs/demo]
                               [--steps 120] [--inner-steps 20] [--batch-size 8] [--outer-momentum 0.5]
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from meridian_procs import coordinator_address, json_lines, outer_rounds, read_text as read, write_token

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--bin", default="build/apps/meridian/meridian")
parser.add_argument("--dir", default="runs/demo")
parser.add_argument("--steps", type=int, default=120, help="inner steps per node (train.steps)")
parser.add_argument("--inner-steps", type=int, default=20, help="H: inner steps per round")
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--kill-after-round", type=int, default=2)
parser.add_argument("--outer-momentum", type=float, default=0.5,
                    help="outer Nesterov momentum (the trainer's default 0.9 overshoots in a run of 6 rounds)")
parser.add_argument("--overlap", default="none", choices=["none", "delayed", "eager"],
                    help="diloco.overlap; none is the measured best here: on localhost the all-reduce takes "
                         "milliseconds, so there is little to hide, and at this horizon the overlapped modes "
                         "cost about 4%% of validation loss (README, bench/diloco/quality.py)")
parser.add_argument("--timeout", type=int, default=600, help="seconds before the demo gives up")
args = parser.parse_args()

BIN = os.path.abspath(args.bin)
DIR = os.path.abspath(args.dir)
if not os.path.exists(BIN):
    sys.exit("error: %s does not exist\nhint: run `make build` first (make demo does)" % BIN)
shutil.rmtree(DIR, ignore_errors=True)
os.makedirs(DIR)
TOKEN = write_token(os.path.join(DIR, "run.token"))
RUN_LOG = os.path.join(DIR, "run.jsonl")
T0 = time.monotonic()
procs = {}


def elapsed():
    return time.monotonic() - T0


def start(name, argv):
    log = open(os.path.join(DIR, name + ".log"), "w")
    procs[name] = subprocess.Popen([BIN] + argv, stdout=log, stderr=subprocess.STDOUT)
    return procs[name]


def outer(name):
    return outer_rounds(os.path.join(DIR, name, "metrics.jsonl"))


def run_events():
    return json_lines(RUN_LOG)


TRAIN = ["train", "--preset", "demo", "--set", "train.steps=%d" % args.steps, "--set", "train.batch_size=%d" % args.batch_size,
         "--set", "train.threads=1", "--set", "train.log_every=10", "--set", "train.eval_every=0", "--set", "run.peak_tflops=0.15"]


def node(name):
    return start(name, TRAIN + ["--set", "run.dir=" + os.path.join(DIR, name), "--set", "diloco.enabled=true",
                                "--set", "diloco.inner_steps=%d" % args.inner_steps, "--set", "diloco.min_nodes=3",
                                "--set", "diloco.codec=int8", "--set", "diloco.outer_momentum=%g" % args.outer_momentum,
                                "--set", "diloco.overlap=" + args.overlap,
                                "--coordinator", coord, "--token-file", TOKEN])


def fail(msg):
    print("\ndemo failed: " + msg)
    for p in procs.values():
        if p.poll() is None:
            p.kill()
    sys.exit(1)


# --- start -----------------------------------------------------------------------------------
coord = coordinator_address(os.path.join(DIR, "coordinator.log"),
                            start("coordinator", ["coordinator", "--listen", "127.0.0.1:0", "--token-file", TOKEN,
                                                  "--log", RUN_LOG, "--heartbeat-timeout-ms", "3000"]))
if coord is None:
    fail("the coordinator did not start; see %s/coordinator.log" % DIR)

print("Meridian decentralized demo: DiLoCo (H=%d inner steps, int8 pseudo-gradients, outer Nesterov lr 0.7 momentum %g, "
      "overlap %s) on 3 nodes, %d steps each" % (args.inner_steps, args.outer_momentum, args.overlap, args.steps))
print("coordinator %s, run directory %s; node 3 is killed after round %d and node 4 joins\n" % (coord, DIR, args.kill_after_round))
for name in ("node1", "node2", "node3"):
    node(name)
start("alone", TRAIN + ["--set", "run.dir=" + os.path.join(DIR, "alone")])

print("%6s %5s %5s %6s %8s %7s %11s %8s %6s  %-12s %s" %
      ("time", "round", "step", "nodes", "loss", "ppl", "all-reduce", "sent", "util", "theta", "events"))
printed = 0
seen_events = 0
killed_at = None
joiner_started = None
members = ["node1", "node2", "node3"]
hash_ok = True
last_round = args.steps // args.inner_steps


def event_text(e):
    kind = e.get("event")
    if kind == "admitted":
        return "admitted peers %s" % ",".join(str(p) for p in e.get("admitted", []))
    if kind in ("left", "evicted", "closed"):
        return "peer %s %s" % (e.get("peer"), kind)
    return None


while True:
    if elapsed() > args.timeout:
        fail("not finished after %d s" % args.timeout)
    alive = [n for n in members if n in procs and procs[n].poll() is None]
    # A row once every node still in the run has reported the round (or has exited).
    r = printed + 1
    reports = {n: outer(n).get(r) for n in members}
    waiting = [n for n in alive if reports[n] is None and (n != "node4" or outer(n))]
    if reports and any(reports.values()) and not waiting:
        rows = [j for j in reports.values() if j]
        hashes = {j["outer_hash"] for j in rows}
        hash_ok &= len(hashes) == 1
        j = rows[0]
        events = []
        all_events = run_events()
        for e in all_events[seen_events:]:
            t = event_text(e)
            if t:
                events.append(t)
        seen_events = len(all_events)
        if any(x.get("joined") for x in rows):
            joined = [n for n in members if reports[n] and reports[n].get("joined")]
            events.append("%s received the state (%.1f MB)" % (",".join(joined), reports[joined[0]]["state_bytes_downloaded"] / 1e6))
        if j.get("retries"):
            events.append("all-reduce retried with the survivors")
        print("%5.0fs %5d %5d %6d %8.4f %7.2f %9.3f s %6.2f MB %5.1f%%  %-12s %s%s" %
              (elapsed(), r, j["step"], j["nodes"], j["loss"], j["ppl"], j["all_reduce_s"], j["bytes_sent"] / 1e6,
               100 * sum(x["utilization"] for x in rows) / len(rows), j["outer_hash"][:12],
               "" if len(hashes) == 1 else "HASHES DIFFER ", "; ".join(events)), flush=True)
        printed = r
        if r == args.kill_after_round and killed_at is None:
            procs["node3"].send_signal(signal.SIGKILL)
            procs["node3"].wait()
            killed_at = elapsed()
            print("%5.0fs  -- node3 SIGKILLed (mid-round %d); node4 starts and will join at a round start" % (killed_at, r + 1), flush=True)
            members.remove("node3")
            members.append("node4")
            node("node4")
            joiner_started = elapsed()
        if r >= last_round:
            break
    if all(procs[n].poll() is not None for n in members if n in procs) and printed < last_round and not any(outer(n).get(r) for n in members):
        fail("the nodes exited before round %d; see %s/*.log" % (r, DIR))
    time.sleep(0.2)

for name in members + ["alone"]:
    try:
        code = procs[name].wait(timeout=max(10, args.timeout - elapsed()))
    except subprocess.TimeoutExpired:
        fail("%s did not finish" % name)
    if code != 0:
        fail("%s exited with %d; see %s/%s.log" % (name, code, DIR, name))
wall = elapsed()
procs["coordinator"].send_signal(signal.SIGTERM)
try:
    procs["coordinator"].wait(timeout=10)
except subprocess.TimeoutExpired:
    procs["coordinator"].kill()


# --- summary ---------------------------------------------------------------------------------
def summary_of(name):
    text = read(os.path.join(DIR, name + ".log"))
    val = re.search(r"validation loss ([0-9.]+)", text)
    done = re.search(r"# done: steps \d+-\d+ in ([0-9.]+) s", text)
    return (float(val.group(1)) if val else float("nan")), (float(done.group(1)) if done else float("nan"))


val_diloco, secs_diloco = summary_of("node1")
val_alone, secs_alone = summary_of("alone")
rounds = outer("node1")
params = rounds[1]["params"]
sent = sum(j["bytes_sent"] for j in rounds.values())
# Data parallel: every step an fp32 gradient all-reduce, 2(N-1)/N x params x 4 bytes per node.
dp = sum(2 * (j["nodes"] - 1) / j["nodes"] * params * 4 * args.inner_steps for j in rounds.values())
util = [j["utilization"] for r, j in sorted(rounds.items()) if r > 1]
# Communication hidden behind compute: the all-reduce's seconds the inner steps did not wait for
# (none with diloco.overlap = none, where they stand still for all of it).
comm_s = sum(j["all_reduce_s"] for j in rounds.values())
waited_s = sum(j.get("wait_s", j["all_reduce_s"]) for j in rounds.values())
hidden_s = sum(max(0.0, j["all_reduce_s"] - j.get("wait_s", j["all_reduce_s"])) for j in rounds.values())
joiner = outer("node4")
first_joined = min(joiner) if joiner else None
retried = [r for r, j in rounds.items() if j.get("retries")]

print("\nSummary (%.0f s wall)" % wall)
print("  validation loss: DiLoCo node %.4f vs one node alone %.4f (same steps, same batch; %.0f s vs %.0f s of training)" %
      (val_diloco, val_alone, secs_diloco, secs_alone))
print("  outer-parameter hashes: %s in every round" % ("equal on all nodes" if hash_ok else "DIFFERENT"))
print("  compute utilization (inner compute / round time, rounds 2-%d): mean %.1f%%, min %.1f%%" %
      (len(rounds), 100 * sum(util) / max(1, len(util)), 100 * min(util, default=0)))
print("  communication (node1, diloco.overlap = %s): all-reduce %.2f s in %d rounds, %.2f s of it hidden behind compute, "
      "the inner steps waited %.2f s" % (args.overlap, comm_s, len(rounds), hidden_s, waited_s))
print("  bytes sent by node1: %.2f MB in %d all-reduces; data parallel (fp32 gradients every step) would send %.1f MB: %.0fx less" %
      (sent / 1e6, len(rounds), dp / 1e6, dp / max(1, sent)))
print("  recovery: node3 SIGKILLed at %.0f s (after round %d)%s" %
      (killed_at or 0, args.kill_after_round, "; survivors retried the all-reduce of round(s) %s" % retried if retried else
       "; the survivors' next barrier went on without it"))
if first_joined:
    j = joiner[first_joined]
    print("  node4 started at %.0f s, joined at round %d and received %.2f MB of state; it trained rounds %d-%d with the others" %
          (joiner_started, first_joined, j["state_bytes_downloaded"] / 1e6, first_joined, max(joiner)))
else:
    print("  node4 did not join before the end")
print("  per-node logs and metrics: %s/{node1,node2,node3,node4,alone}, coordinator run log: %s" % (DIR, RUN_LOG))
sys.exit(0 if hash_ok and first_joined else 1)
