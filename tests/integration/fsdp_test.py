#!/usr/bin/env python3
"""Sharded data parallel inside a node (`meridian train --nproc-per-node G`), real processes.

  fsdp_test.py MERIDIAN CASE
    equivalence  tiny and debug presets: G = 2 ranks of batch 4 against one process of batch 8,
                 20 steps: loss and gradient norm per step, and every parameter and AdamW moment
                 of the final checkpoint, agree to a stated tolerance (the reduction order
                 differs, so not bit for bit)
    resume       G = 2: 10 steps, stop, --resume to 20 equals 20 steps straight bit for bit; the
                 G = 2 checkpoint resumes with G = 1 (re-sharded) and with G = 4
    kill-rank    SIGKILL of local rank 1 mid-run (tiny preset): the launcher names the rank and its signal and
                 stops rank 0 within seconds; --resume finishes the run
    bad-input    a rank that cannot reach the rendezvous, nproc_per_node out of range, DiLoCo with
                 G > 1: each a one-line error with a hint
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools"))
from meridian_procs import json_lines, license_shards, read_text, stop_all  # noqa: E402

BIN, CASE = os.path.abspath(sys.argv[1]), sys.argv[2]
WORK = tempfile.mkdtemp(prefix="meridian-fsdp-")
results = {"passed": 0, "failed": 0}
procs = []
# Loss and gradient norm per step; parameters and moments after 20 steps, relative to the
# tensor's largest value. fp32 sums over 2 x 4 rows against 8 rows differ in the last bits.
STEP_TOL = 1e-4
TENSOR_TOL = 1e-3


def check(what, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(("ok   " if ok else "FAIL ") + what + ("" if ok or not detail else "\n  " + str(detail)), flush=True)
    return ok


def data_args():
    return ["--set", "data.train_path=" + os.path.join(WORK, "shards", "train"),
            "--set", "data.val_path=" + os.path.join(WORK, "shards", "val")]


def train(name, args, timeout=300):
    """Runs `meridian train` to the end; returns (exit code, output)."""
    log = os.path.join(WORK, name + ".log")
    with open(log, "w") as out:
        p = subprocess.run([BIN, "train"] + args, cwd=WORK, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    return p.returncode, read_text(log)


def run_args(preset, run_dir, steps, batch, extra=()):
    return (["--preset", preset, "--set", "run.dir=" + run_dir, "--set", "train.steps=%d" % steps,
             "--set", "train.batch_size=%d" % batch, "--set", "train.warmup_steps=3", "--set", "train.eval_every=0",
             "--set", "train.eval_batches=2", "--set", "train.threads=1"] + data_args() + list(extra))


def inner(run_dir):
    return {j["step"]: j for j in json_lines(os.path.join(run_dir, "metrics.jsonl")) if j.get("type") == "inner"}


def checkpoint(run_dir, step):
    import llama_ref
    d = os.path.join(run_dir, "checkpoints", "step_%08d" % step)
    model, _ = llama_ref.read_safetensors(os.path.join(d, "model.safetensors"))
    state, _ = llama_ref.read_safetensors(os.path.join(d, "state.safetensors"))
    return model, state


def worst_relative(a, b):
    worst, where = 0.0, ""
    for name, t in a.items():
        if name not in b or b[name].shape != t.shape:
            return float("inf"), name + " missing or of another shape"
        scale = max(float(t.abs().max()), 1e-12)
        d = float((t.double() - b[name].double()).abs().max()) / scale
        if d > worst:
            worst, where = d, name
    return worst, where


def case_equivalence():
    for preset in ("tiny", "debug"):
        one, two = os.path.join(WORK, preset + "-g1"), os.path.join(WORK, preset + "-g2")
        rc1, out1 = train(preset + "-g1", run_args(preset, one, 20, 8))
        rc2, out2 = train(preset + "-g2", run_args(preset, two, 20, 4) + ["--nproc-per-node", "2"])
        if not check("%s: G = 1 and G = 2 runs finish" % preset, rc1 == 0 and rc2 == 0, out1[-1500:] + out2[-1500:]):
            continue
        a, b = inner(one), inner(two)
        check("%s: 20 steps logged by both (rank 0 only for G = 2)" % preset, sorted(a) == sorted(b) == list(range(1, 21)))
        dl = max(abs(a[s]["loss"] - b[s]["loss"]) / a[s]["loss"] for s in a)
        dg = max(abs(a[s]["grad_norm"] - b[s]["grad_norm"]) / a[s]["grad_norm"] for s in a)
        check("%s: loss per step agrees (worst relative difference %.2e <= %.0e)" % (preset, dl, STEP_TOL), dl <= STEP_TOL)
        check("%s: gradient norm per step agrees (worst %.2e <= %.0e)" % (preset, dg, STEP_TOL), dg <= STEP_TOL)
        check("%s: tokens seen per step are the global batch's" % preset, a[20]["tokens_seen"] == b[20]["tokens_seen"],
              (a[20]["tokens_seen"], b[20]["tokens_seen"]))
        m1, s1 = checkpoint(one, 20)
        m2, s2 = checkpoint(two, 20)
        dm, wm = worst_relative(m1, m2)
        s1 = {k: v for k, v in s1.items() if k.startswith("exp_avg")}
        ds, ws = worst_relative(s1, s2)
        check("%s: parameters after 20 steps agree (worst %.2e in %s, <= %.0e)" % (preset, dm, wm, TENSOR_TOL), dm <= TENSOR_TOL)
        check("%s: AdamW moments after 20 steps agree (worst %.2e in %s, <= %.0e)" % (preset, ds, ws, TENSOR_TOL), ds <= TENSOR_TOL)
        check("%s: rank 1 logged to rank_1.log" % preset, "step     20/20" in read_text(os.path.join(two, "rank_1.log")))


def case_resume():
    straight, split = os.path.join(WORK, "straight"), os.path.join(WORK, "split")
    g2 = ["--nproc-per-node", "2"]
    rc, out = train("straight", run_args("tiny", straight, 20, 4, g2))
    check("20 steps straight with G = 2", rc == 0, out[-1500:])
    rc, out = train("split-a", run_args("tiny", split, 20, 4, g2 + ["--set", "train.stop_at_step=10"]))
    check("10 steps with G = 2", rc == 0, out[-1500:])
    rc, out = train("split-b", ["--resume", split, "--set", "train.threads=1"])
    check("--resume to 20 with G = 2 (from the checkpoint's config)", rc == 0 and "local rank 0 of 2" in out, out[-1500:])
    if rc == 0:
        m1, s1 = checkpoint(straight, 20)
        m2, s2 = checkpoint(split, 20)
        same = all(bool((m1[k] == m2[k]).all()) for k in m1) and all(bool((s1[k] == s2[k]).all()) for k in s1 if k in s2)
        check("10 + resume + 10 equals 20 straight bit for bit", same)
    # The consolidated checkpoint re-shards: G = 1 with batch 8 and G = 4 with batch 2 go on from it.
    for g, batch in ((1, 8), (4, 2)):
        d = os.path.join(WORK, "reshard-%d" % g)
        rc, out = train("reshard-%d" % g, ["--resume", os.path.join(split, "checkpoints", "step_00000010"), "--set", "run.dir=" + d,
                                           "--set", "train.batch_size=%d" % batch, "--set", "train.threads=1",
                                           "--nproc-per-node", str(g)])
        ok = rc == 0 and os.path.isdir(os.path.join(d, "checkpoints", "step_00000020"))
        if check("the G = 2 checkpoint of step 10 resumes with G = %d to step 20" % g, ok, out[-1500:]):
            m, _ = checkpoint(d, 20)
            dm, wm = worst_relative(checkpoint(straight, 20)[0], m)
            check("  and ends where G = 2 did (worst %.2e in %s, <= %.0e)" % (dm, wm, TENSOR_TOL), dm <= TENSOR_TOL)


def case_kill_rank():
    d = os.path.join(WORK, "killed")
    log = open(os.path.join(WORK, "killed.log"), "w")
    p = subprocess.Popen([BIN, "train"] + run_args("tiny", d, 150, 4, ["--nproc-per-node", "2", "--set", "train.checkpoint_every=5"]),
                         cwd=WORK, stdout=log, stderr=subprocess.STDOUT)
    procs.append(p)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not os.path.isdir(os.path.join(d, "checkpoints", "step_00000010")):
        time.sleep(0.1)
    rank1 = None
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                env = open("/proc/%s/environ" % pid, "rb").read()
                if b"MERIDIAN_LOCAL_RANK=1\0" in env and d.encode() in open("/proc/%s/cmdline" % pid, "rb").read():
                    rank1 = int(pid)
            except OSError:
                continue
    if not check("local rank 1 found after 10 steps", rank1 is not None):
        return
    os.kill(rank1, signal.SIGKILL)
    t0 = time.monotonic()
    try:
        rc = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        rc = None
    took = time.monotonic() - t0
    out = read_text(os.path.join(WORK, "killed.log"))
    check("the node stops within 30 s of the kill (%.1f s), exit status 1" % took, rc == 1, out[-2000:])
    check("the error names local rank 1 and its signal", re.search(r"error: local rank 1 \(pid \d+\) ended with signal 9", out), out[-2000:])
    check("no rank outlives the node", not os.path.exists("/proc/%d" % rank1) or "zombie" in read_text("/proc/%d/status" % rank1).lower())
    rc, out = train("killed-resume", ["--resume", d, "--set", "train.stop_at_step=0", "--set", "train.steps=150",
                                      "--set", "train.threads=1"], timeout=600)
    check("--resume after the kill finishes the run", rc == 0 and os.path.isdir(os.path.join(d, "checkpoints", "step_00000150")), out[-1500:])


def case_bad_input():
    def expect(name, args, pattern, env=None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.run([BIN, "train"] + args, cwd=WORK, capture_output=True, text=True, env=full_env, timeout=120)
        err = p.stderr
        ok = p.returncode != 0 and re.search(pattern, err) and "hint:" in err
        check("%s: %s" % (name, pattern), ok, (p.returncode, err[-1200:]))

    d = os.path.join(WORK, "bad")
    expect("a rank alone at the rendezvous", run_args("tiny", d, 5, 4, ["--nproc-per-node", "2"]),
           r"local rank 0 of 2: the local rendezvous through .* failed",
           {"MERIDIAN_LOCAL_RANK": "0", "MERIDIAN_LOCAL_WORLD_SIZE": "2", "MERIDIAN_LOCAL_RENDEZVOUS": os.path.join(WORK, "rdv"),
            "MERIDIAN_LOCAL_RENDEZVOUS_TIMEOUT_MS": "2000"})
    expect("a rank started by hand for another G", run_args("tiny", d, 5, 4, ["--nproc-per-node", "2"]),
           r"local rank 0 was started for 4 ranks, but train.nproc_per_node is 2",
           {"MERIDIAN_LOCAL_RANK": "0", "MERIDIAN_LOCAL_WORLD_SIZE": "4", "MERIDIAN_LOCAL_RENDEZVOUS": os.path.join(WORK, "rdv")})
    expect("nproc_per_node 0", run_args("tiny", d, 5, 4, ["--set", "train.nproc_per_node=0"]), r"train.nproc_per_node must be in 1..64")
    expect("DiLoCo with G = 2", run_args("tiny", d, 5, 4, ["--nproc-per-node", "2", "--set", "diloco.enabled=true"]),
           r"diloco.enabled with train.nproc_per_node > 1 is not supported yet")


def main():
    license_shards(BIN, WORK)
    {"equivalence": case_equivalence, "resume": case_resume, "kill-rank": case_kill_rank, "bad-input": case_bad_input}[CASE]()
    failed = results["failed"] > 0
    stop_all(procs, WORK, failed)
    print("%d passed, %d failed" % (results["passed"], results["failed"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
