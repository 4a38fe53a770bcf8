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
    bad-input    a rank that cannot reach the rendezvous, nproc_per_node out of range: each a
                 one-line error with a hint
    diloco       DiLoCo at two levels (fp32 codec, 3 rounds of H = 4): 2 nodes x G = 2 end where
                 2 nodes x G = 1 do (same tolerance); a G = 1 and a G = 2 node in one run hold the
                 same outer hash every round, bit for bit; a G = 2 joiner catches up and agrees
    diloco-kill  SIGKILL of local rank 1 of a G = 2 node during its inner steps: the node goes
                 down naming the rank, the other node goes on alone, --resume brings it back
"""
import json
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
from meridian_procs import coordinator_address, json_lines, license_shards, outer_rounds, read_text, stop_all, write_token  # noqa: E402

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
    rank1, rc, took = kill_local_rank1(d, p, 30)
    if rank1 is None:
        return
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


TOKEN = os.path.join(WORK, "token")


def spawn(name, args, env=None):
    log = open(os.path.join(WORK, name + ".log"), "w")
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = subprocess.Popen([BIN] + args, cwd=WORK, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    p.name = name
    procs.append(p)
    return p


def coordinator(name):
    if not os.path.exists(TOKEN):
        write_token(TOKEN)
    p = spawn(name, ["coordinator", "--listen", "127.0.0.1:0", "--token-file", TOKEN, "--heartbeat-timeout-ms", "6000",
                     "--log", os.path.join(WORK, name + ".jsonl")])
    address = coordinator_address(os.path.join(WORK, name + ".log"), p)
    check("coordinator %s listening" % name, address is not None, read_text(os.path.join(WORK, name + ".log"))[-800:])
    return address or "127.0.0.1:1"


def dnode(name, coord, g, batch, steps=12, resume=False, env=None):
    """A DiLoCo node of G local ranks (fp32 codec, H = 4) of the global batch 8."""
    join = ["--coordinator", coord, "--token-file", TOKEN, "--nproc-per-node", str(g)]
    if resume:
        return spawn(name + "-resumed", ["train", "--resume", os.path.join(WORK, name), "--set", "train.threads=1"] + join, env)
    return spawn(name, ["train"] + run_args("tiny", os.path.join(WORK, name), steps, batch,
                                            ["--set", "diloco.enabled=true", "--set", "diloco.inner_steps=4", "--set", "diloco.min_nodes=2",
                                             "--set", "diloco.codec=fp32", "--set", "train.checkpoint_every=4"]) + join, env)


def ended(p, timeout=300):
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        rc = None
    return check("%s finished (exit %s)" % (p.name, rc), rc == 0, read_text(os.path.join(WORK, p.name + ".log"))[-1500:])


def outer_of(name):
    return outer_rounds(os.path.join(WORK, name, "metrics.jsonl"))


def one_hash_per_round(names):
    by_round = {}
    for n in names:
        for r, j in outer_of(n).items():
            by_round.setdefault(r, set()).add(j["outer_hash"])
    bad = {r: h for r, h in by_round.items() if len(h) != 1}
    return check("one outer hash per round on %s (%d rounds)" % (",".join(names), len(by_round)), by_round and not bad, bad or "no rounds")


def wait_round(name, r, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if max(outer_of(name), default=0) >= r:
            return True
        time.sleep(0.1)
    return check("round %d reached on %s" % (r, name), False)


def case_diloco():
    # 2 nodes x G = 1 of batch 8 against 2 nodes x G = 2 of batch 4 per rank.
    for g, batch in ((1, 8), (2, 4)):
        coord = coordinator("coord-g%d" % g)
        pair = [dnode("g%d%s" % (g, x), coord, g, batch) for x in "ab"]
        for p in pair:
            ended(p)
        one_hash_per_round(["g%da" % g, "g%db" % g])
        check("G = %d: 3 rounds of 2 nodes" % g, [j["nodes"] for j in outer_of("g%da" % g).values()] == [2, 2, 2], outer_of("g%da" % g))
        rings = [j.get("rings") for n in ("g%da" % g, "g%db" % g) for j in outer_of(n).values()]
        check("G = %d: the all-reduce ran on %d ring(s) per node every round" % (g, g), rings == [g] * 6, rings)
    # Which node of a run reads which data shard is its rank in the view (the order the nodes
    # registered), so the G = 2 run's nodes are matched with the G = 1 run's by their state.
    def moments(name):
        _, state = checkpoint(os.path.join(WORK, name), 12)
        return {k: v for k, v in state.items() if k.startswith(("exp_avg", "outer."))}
    m1 = {x: moments("g1" + x) for x in "ab"}
    m2 = {x: moments("g2" + x) for x in "ab"}
    pairings = [{"a": "a", "b": "b"}, {"a": "b", "b": "a"}]
    worst = [max(worst_relative(m1[x], m2[pair[x]])[0] for x in "ab") for pair in pairings]
    pair = pairings[worst.index(min(worst))]
    for x in "ab":
        y = pair[x]
        r1, r2 = outer_of("g1" + x), outer_of("g2" + y)
        if sorted(r1) == sorted(r2) == [1, 2, 3]:
            dl = max(abs(r1[r]["loss"] - r2[r]["loss"]) / r1[r]["loss"] for r in r1)
            check("node %s: round losses of G = 2 match G = 1 (worst relative %.2e <= %.0e)" % (x, dl, STEP_TOL), dl <= STEP_TOL)
        dm, wm = worst_relative(checkpoint(os.path.join(WORK, "g1" + x), 12)[0], checkpoint(os.path.join(WORK, "g2" + y), 12)[0])
        ds, ws = worst_relative(m1[x], m2[y])
        check("node %s: parameters after 3 rounds agree (worst %.2e in %s, <= %.0e)" % (x, dm, wm, TENSOR_TOL), dm <= TENSOR_TOL)
        check("node %s: AdamW moments and outer state agree (worst %.2e in %s, <= %.0e)" % (x, ds, ws, TENSOR_TOL), ds <= TENSOR_TOL)
    # One run, a node of each G; a G = 2 joiner once the run is at round 2.
    coord = coordinator("coord-mixed")
    a, b = dnode("mixed-a", coord, 1, 8, steps=120), dnode("mixed-b", coord, 2, 4, steps=120)
    if wait_round("mixed-a", 2):
        c = dnode("mixed-c", coord, 2, 4, steps=120)
        for p in (a, b, c):
            ended(p)
        one_hash_per_round(["mixed-a", "mixed-b", "mixed-c"])
        rounds_c = sorted(outer_of("mixed-c"))
        check("the G = 2 joiner trained from round %s to 30" % (rounds_c[:1] or "?"), rounds_c and rounds_c[-1] == 30 and rounds_c[0] >= 3,
              rounds_c)
        check("the joiner received the run state", "received the run state" in read_text(os.path.join(WORK, "mixed-c.log")))
        check("the last round had 3 nodes", outer_of("mixed-a")[30]["nodes"] == 3 if 30 in outer_of("mixed-a") else False)
        rings = {j.get("rings") for n in ("mixed-b", "mixed-c") for j in outer_of(n).values()}
        check("nodes of different G: rank 0 reduced the whole pseudo-gradient (one ring)", rings == {1}, rings)


def local_rank_pid(run_dir, rank):
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                env = open("/proc/%s/environ" % pid, "rb").read()
                if ("MERIDIAN_LOCAL_RANK=%d\0" % rank).encode() in env and run_dir.encode() in open("/proc/%s/cmdline" % pid, "rb").read():
                    return int(pid)
            except OSError:
                continue
    return None


def kill_local_rank1(run_dir, launcher, timeout):
    """SIGKILLs local rank 1 of the node in run_dir; (its pid or None, the launcher's exit status, seconds to it)."""
    victim = local_rank_pid(run_dir, 1)
    if not check("local rank 1 of %s found" % os.path.basename(run_dir), victim is not None):
        return None, None, 0.0
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    try:
        rc = launcher.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = None
    return victim, rc, time.monotonic() - t0


def case_diloco_kill(during_all_reduce=False):
    """SIGKILL of local rank 1 of node b during the inner steps, or (during_all_reduce) as it
    enters its ring's part of round 3's all-reduce (fault point diloco.rank_ring)."""
    coord = coordinator("coord")
    env = {"MERIDIAN_FAULT": "diloco.rank_ring@3"} if during_all_reduce else None
    a, b = dnode("a", coord, 2, 4, steps=200), dnode("b", coord, 2, 4, steps=200, env=env)
    if during_all_reduce:
        t0 = time.monotonic()
        try:
            rc = b.wait(timeout=240)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t0
        out = read_text(os.path.join(WORK, "b.log"))
        check("local rank 1 of node b reached the fault point in its ring", "fault point diloco.rank_ring reached" in
              read_text(os.path.join(WORK, "b", "rank_1.log")))
    else:
        if not wait_round("b", 2):
            return
        victim, rc, took = kill_local_rank1(os.path.join(WORK, "b"), b, 60)
        if victim is None:
            return
        out = read_text(os.path.join(WORK, "b.log"))
    check("node b stops (%.1f s after %s), exit status 1" % (took, "its start" if during_all_reduce else "the kill"), rc == 1, out[-2000:])
    check("node b names local rank 1 and its signal", re.search(r"local rank 1 \(pid \d+\) ended with signal 9", out), out[-2000:])
    at_kill = max(outer_of("a"), default=0)
    if during_all_reduce and wait_round("a", 3):
        r3 = outer_of("a")[3]
        check("node a retried round 3's all-reduce alone (%d retries, %.2f s)" % (r3.get("retries", 0), r3["all_reduce_s"]),
              r3["nodes"] == 1 and r3.get("retries", 0) >= 1, r3)
    check("node a goes on alone", wait_round("a", at_kill + 2) and outer_of("a")[at_kill + 2]["nodes"] == 1, outer_of("a").get(at_kill + 2))
    b2 = dnode("b", coord, 2, 4, resume=True)
    ended(a, timeout=600)
    ended(b2, timeout=600)
    one_hash_per_round(["a", "b"])
    check("node b rejoined with --resume (2 nodes in the last round)", outer_of("a")[50]["nodes"] == 2 if 50 in outer_of("a") else False)


def case_bench():
    """`meridian bench step --nproc-per-node 2` and its PyTorch counterpart (bench/step_torch.py
    --nproc 2, DistributedDataParallel over Gloo) run and report the node's figures; no timing
    is asserted (bench/bench_step.sh compares them)."""
    def json_line(argv):
        p = subprocess.run(argv, cwd=WORK, capture_output=True, text=True, timeout=300)
        lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
        check("%s exits 0 with one JSON line" % " ".join(os.path.basename(a) for a in argv[:3]), p.returncode == 0 and len(lines) == 1,
              (p.returncode, p.stdout[-800:], p.stderr[-800:]))
        return json.loads(lines[0]) if lines else {}

    ours = json_line([BIN, "bench", "step", "--preset", "tiny", "--steps", "2", "--warmup", "1", "--nproc-per-node", "2",
                      "--set", "train.threads=1"])
    check("meridian: 2 ranks, tokens/s > 0, the node's batch", ours.get("nproc") == 2 and ours.get("tokens_per_s", 0) > 0, ours)
    shape = subprocess.run([BIN, "config", "--preset", "tiny"], capture_output=True, text=True, check=True).stdout
    import tomllib
    c = tomllib.loads(shape)
    cfg = {k: c["model"][k] for k in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "rope_theta", "norm_eps",
                                      "max_seq_len")}
    cfg.update(batch_size=c["train"]["batch_size"], seq_len=c["train"]["seq_len"])
    theirs = json_line(["/usr/bin/python3", os.path.join(HERE, "..", "..", "bench", "step_torch.py"), "--config", json.dumps(cfg),
                        "--steps", "2", "--warmup", "1", "--threads", "2", "--nproc", "2"])
    check("pytorch: 2 ranks of DistributedDataParallel, tokens/s > 0",
          theirs.get("nproc") == 2 and theirs.get("tokens_per_s", 0) > 0 and "Distributed" in theirs.get("parallel", ""), theirs)


def main():
    license_shards(BIN, WORK)
    {"equivalence": case_equivalence, "resume": case_resume, "kill-rank": case_kill_rank, "bad-input": case_bad_input,
     "diloco": case_diloco, "diloco-kill": case_diloco_kill,
     "diloco-kill-ring": lambda: case_diloco_kill(during_all_reduce=True), "bench": case_bench}[CASE]()
    failed = results["failed"] > 0
    stop_all(procs, WORK, failed)
    print("%d passed, %d failed" % (results["passed"], results["failed"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
