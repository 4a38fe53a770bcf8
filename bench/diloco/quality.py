#!/usr/bin/env python3
"""DiLoCo quality on the demo data: N nodes with DiLoCo (int8 and fp32 pseudo-gradients) against
one node alone, each node running the same number of inner steps on the same settings, and
against data parallel at equal tokens (run "dp": one node with N times the batch, the same
schedule and steps).

Runs, one after the other on this machine: a coordinator + N `meridian train --coordinator`
nodes with diloco.codec=int8, the same with fp32, and one node alone (and, when named in
--runs, int8 with diloco.overlap=delayed or eager, compared with the blocking int8 run). Prints every run's final
validation loss (the same validation sequences for all), DiLoCo's gain over the lone node and
int8's difference from fp32.

The outer optimizer defaults to Nesterov with lr 0.7 and momentum 0.5, not the trainer's
0.7 / 0.9: at these short horizons (10-30 rounds, the demo's aggressive inner lr) momentum 0.9
overshoots (docs/algorithms.md, "Outer optimizer at short horizons", has the sweep).

Usage: python3 bench/diloco/quality.py [--bin build/apps/meridian/meridian] [--nodes 4]
                                       [--steps 200] [--inner-steps 20] [--batch-size 8]
                                       [--outer-lr 0.7] [--outer-momentum 0.5]
                                       [--runs diloco-int8,diloco-fp32,alone,dp,diloco-int8-delayed,diloco-int8-eager] [--set KEY=VALUE]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from meridian_procs import coordinator_address, read_text, write_token  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--bin", default="build/apps/meridian/meridian")
parser.add_argument("--nodes", type=int, default=4)
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--inner-steps", type=int, default=20)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--outer-lr", type=float, default=0.7)
parser.add_argument("--outer-momentum", type=float, default=0.5)
parser.add_argument("--eval-batches", type=int, default=32)
parser.add_argument("--set", action="append", default=[], help="extra key=value for every run")
parser.add_argument("--runs", default="diloco-int8,diloco-fp32,alone,dp", help="which runs, comma-separated")
args = parser.parse_args()
BIN = os.path.abspath(args.bin)
WORK = tempfile.mkdtemp(prefix="diloco_quality_")
TOKEN = write_token(os.path.join(WORK, "token"))

COMMON = ["train", "--preset", "demo", "--set", "train.steps=%d" % args.steps,
          "--set", "train.threads=1", "--set", "train.eval_every=0",
          "--set", "run.peak_tflops=0.15", "--set", "train.log_every=50"]
if (args.eval_batches * args.batch_size) % (args.nodes * args.batch_size):
    sys.exit("error: --eval-batches %d x --batch-size %d is not a multiple of the data-parallel batch %d x %d\n"
             "hint: pick --eval-batches divisible by --nodes, so every run validates on the same sequences"
             % (args.eval_batches, args.batch_size, args.nodes, args.batch_size))
for kv in args.set:
    COMMON += ["--set", kv]


def val_loss(log):
    m = re.search(r"validation loss ([0-9.]+)", read_text(log))
    return float(m.group(1)) if m else float("nan")


def run(name, nodes, codec, overlap="none", batch_size=None):
    t0 = time.monotonic()
    procs, logs = [], []
    coord = None
    if nodes > 0:
        clog = os.path.join(WORK, name + "-coordinator.log")
        c = subprocess.Popen([BIN, "coordinator", "--listen", "127.0.0.1:0", "--token-file", TOKEN],
                             stdout=open(clog, "w"), stderr=subprocess.STDOUT)
        coord = coordinator_address(clog, c)
        if coord is None:
            sys.exit("error: the coordinator did not start; see " + clog)
    for i in range(max(1, nodes)):
        log = os.path.join(WORK, "%s-%d.log" % (name, i))
        argv = [BIN] + COMMON + ["--set", "run.dir=" + os.path.join(WORK, "%s-%d" % (name, i)),
                                 "--set", "train.batch_size=%d" % (batch_size or args.batch_size),
                                 # The same validation sequences whatever the batch (read in order from the start).
                                 "--set", "train.eval_batches=%d" % (args.eval_batches * args.batch_size // (batch_size or args.batch_size))]
        if nodes > 0:
            argv += ["--set", "diloco.enabled=true", "--set", "diloco.inner_steps=%d" % args.inner_steps,
                     "--set", "diloco.min_nodes=%d" % nodes, "--set", "diloco.codec=" + codec, "--set", "diloco.overlap=" + overlap,
                     "--set", "diloco.outer_lr=%g" % args.outer_lr, "--set", "diloco.outer_momentum=%g" % args.outer_momentum,
                     "--coordinator", coord, "--token-file", TOKEN]
        procs.append(subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT))
        logs.append(log)
    codes = [p.wait() for p in procs]
    if nodes > 0:
        c.terminate()
        c.wait()
    if any(codes):
        sys.exit("error: %s: a node exited with %s; see %s" % (name, codes, WORK))
    losses = [val_loss(log) for log in logs]
    return losses[0], time.monotonic() - t0


print("demo model, %d inner steps per node, batch %d, H=%d, outer Nesterov lr %g momentum %g; validation over %d batches" %
      (args.steps, args.batch_size, args.inner_steps, args.outer_lr, args.outer_momentum, args.eval_batches), flush=True)
results = {}
# "dp": data parallel over the N nodes at equal tokens and steps, run as what it computes
# exactly, one node with N times the batch (the mean gradient of N batches every step).
for name, nodes, codec, overlap, batch in (("diloco-int8", args.nodes, "int8", "none", None),
                                           ("diloco-fp32", args.nodes, "fp32", "none", None),
                                           ("diloco-int8-delayed", args.nodes, "int8", "delayed", None),
                                           ("diloco-int8-eager", args.nodes, "int8", "eager", None), ("alone", 0, "", "none", None),
                                           ("dp", 0, "", "none", args.nodes * args.batch_size)):
    if name not in args.runs.split(","):
        continue
    loss, secs = run(name, nodes, codec, overlap, batch)
    results[name] = loss
    print("%-19s nodes %d  batch %3d  validation loss %.4f  (%.0f s)" %
          (name, max(1, nodes), batch or args.batch_size, loss, secs), flush=True)
if "dp" in results:
    print("against data parallel at equal tokens (one node, batch %d = %d x %d):" % (args.nodes * args.batch_size, args.nodes, args.batch_size))
    for name, loss in results.items():
        if name != "dp":
            print("  %-19s %.4f vs %.4f (%+.2f%%)" % (name, loss, results["dp"], 100 * (loss / results["dp"] - 1)))
if "alone" in results and "diloco-int8" in results:
    alone = results["alone"]
    print("DiLoCo int8 vs alone: %.4f vs %.4f (%+.2f%%)" % (results["diloco-int8"], alone, 100 * (results["diloco-int8"] / alone - 1)))
if "diloco-fp32" in results and "diloco-int8" in results:
    print("int8 vs fp32 pseudo-gradients: %.4f vs %.4f (%+.2f%%)" %
          (results["diloco-int8"], results["diloco-fp32"], 100 * (results["diloco-int8"] / results["diloco-fp32"] - 1)))
for mode in ("delayed", "eager"):
    name = "diloco-int8-" + mode
    if name in results and "diloco-int8" in results:
        print("diloco.overlap=%s vs blocking (int8): %.4f vs %.4f (%+.2f%%)" %
              (mode, results[name], results["diloco-int8"], 100 * (results[name] / results["diloco-int8"] - 1)))
shutil.rmtree(WORK, ignore_errors=True)
