#!/usr/bin/env python3
"""DiLoCo quality on the demo data: N nodes with DiLoCo (int8 and fp32 pseudo-gradients) against
one node alone, each node running the same number of inner steps on the same settings.

Runs, one after the other on this machine: a coordinator + N `meridian train --coordinator`
nodes with diloco.codec=int8, the same with fp32, and one node alone. Prints every run's final
validation loss (the same validation sequences for all), DiLoCo's gain over the lone node and
int8's difference from fp32.

Usage: python3 bench/diloco/quality.py [--bin build/apps/meridian/meridian] [--nodes 4]
                                       [--steps 300] [--inner-steps 20] [--batch-size 8]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--bin", default="build/apps/meridian/meridian")
parser.add_argument("--nodes", type=int, default=4)
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--inner-steps", type=int, default=20)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--eval-batches", type=int, default=32)
parser.add_argument("--set", action="append", default=[], help="extra key=value for every run")
args = parser.parse_args()
BIN = os.path.abspath(args.bin)
WORK = tempfile.mkdtemp(prefix="diloco_quality_")
TOKEN = os.path.join(WORK, "token")
with open(TOKEN, "w") as f:
    f.write(os.urandom(16).hex() + "\n")

COMMON = ["train", "--preset", "demo", "--set", "train.steps=%d" % args.steps, "--set", "train.batch_size=%d" % args.batch_size,
          "--set", "train.threads=1", "--set", "train.eval_every=0", "--set", "train.eval_batches=%d" % args.eval_batches,
          "--set", "run.peak_tflops=0.15", "--set", "train.log_every=50"]
for kv in args.set:
    COMMON += ["--set", kv]


def val_loss(log):
    with open(log) as f:
        m = re.search(r"validation loss ([0-9.]+)", f.read())
    return float(m.group(1)) if m else float("nan")


def run(name, nodes, codec):
    t0 = time.monotonic()
    procs, logs = [], []
    coord = None
    if nodes > 0:
        clog = os.path.join(WORK, name + "-coordinator.log")
        c = subprocess.Popen([BIN, "coordinator", "--listen", "127.0.0.1:0", "--token-file", TOKEN],
                             stdout=open(clog, "w"), stderr=subprocess.STDOUT)
        while coord is None and time.monotonic() - t0 < 30:
            m = re.search(r"listening on (\S+)", open(clog).read())
            coord = m.group(1) if m else None
            time.sleep(0.05)
    for i in range(max(1, nodes)):
        log = os.path.join(WORK, "%s-%d.log" % (name, i))
        argv = [BIN] + COMMON + ["--set", "run.dir=" + os.path.join(WORK, "%s-%d" % (name, i))]
        if nodes > 0:
            argv += ["--set", "diloco.enabled=true", "--set", "diloco.inner_steps=%d" % args.inner_steps,
                     "--set", "diloco.min_nodes=%d" % nodes, "--set", "diloco.codec=" + codec,
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


print("demo model, %d inner steps per node, batch %d, H=%d; validation over %d batches" %
      (args.steps, args.batch_size, args.inner_steps, args.eval_batches), flush=True)
results = {}
for name, nodes, codec in (("diloco-int8", args.nodes, "int8"), ("diloco-fp32", args.nodes, "fp32"), ("alone", 0, "")):
    loss, secs = run(name, nodes, codec)
    results[name] = loss
    print("%-12s nodes %d  validation loss %.4f  (%.0f s)" % (name, max(1, nodes), loss, secs), flush=True)
alone = results["alone"]
print("DiLoCo int8 vs alone: %.4f vs %.4f (%+.2f%%)" % (results["diloco-int8"], alone, 100 * (results["diloco-int8"] / alone - 1)))
print("int8 vs fp32 pseudo-gradients: %.4f vs %.4f (%+.2f%%)" %
      (results["diloco-int8"], results["diloco-fp32"], 100 * (results["diloco-int8"] / results["diloco-fp32"] - 1)))
shutil.rmtree(WORK, ignore_errors=True)
