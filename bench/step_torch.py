"""The PyTorch (Python) side of the inner-step benchmark: the same Llama shape, the same
training step (forward, cross-entropy + z-loss, backward, clip, AdamW) on synthetic tokens, the
same thread count, timed the same way as `meridian bench step`. Prints one JSON line.

--nproc G: G processes on this machine, each with batch_size rows and threads / G threads,
training one model with PyTorch's own data parallelism over Gloo, the counterpart of
`meridian bench step --nproc-per-node G`. That is DistributedDataParallel (a full replica per
rank, gradients all-reduced in buckets during the backward): FullyShardedDataParallel does not
import with Debian's torch 1.13 on Python 3.11 (its sharded-tensor metadata dataclass has a
mutable default, which Python 3.11 refuses), so PyTorch's sharded data parallel cannot run here.
The figures are for the node: G x batch_size x seq_len tokens per step."""

import argparse
import json
import os
import socket
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import llama_ref  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench(rank, world, port, c, steps, warmup, threads, result):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = llama_ref.Config(c["vocab_size"], c["dim"], c["n_layers"], c["n_heads"], c["n_kv_heads"], c["ffn_dim"],
                           c["rope_theta"], c["norm_eps"], c["max_seq_len"])
    model = llama_ref.Llama(cfg)
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    B, T = c["batch_size"], c["seq_len"]
    gen = torch.Generator().manual_seed(1000 + rank)

    def step():
        tokens = torch.randint(cfg.vocab_size, (B, T), generator=gen)
        targets = torch.randint(cfg.vocab_size, (B, T), generator=gen)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        total, ce, _ = llama_ref.lm_loss(model(tokens), targets, 2e-4)
        total.backward()
        ce.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return time.perf_counter() - t0

    for _ in range(warmup):
        step()
    seconds = sum(step() for _ in range(steps))
    if rank == 0:
        result.put(seconds)
    if world > 1:
        torch.distributed.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="JSON of the resolved model/train shape")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, required=True, help="threads of the node, split among the ranks")
    ap.add_argument("--nproc", type=int, default=1, help="ranks (DistributedDataParallel over Gloo when > 1)")
    args = ap.parse_args()
    c = json.loads(args.config)
    G = args.nproc
    threads = max(1, args.threads // G)
    if G == 1:
        import queue
        result = queue.Queue()
        bench(0, 1, 0, c, args.steps, args.warmup, threads, result)
    else:
        import torch.multiprocessing as mp
        ctx = mp.get_context("spawn")
        result = ctx.Queue()
        port = free_port()
        procs = [ctx.Process(target=bench, args=(r, G, port, c, args.steps, args.warmup, threads, result)) for r in range(G)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [r for r, p in enumerate(procs) if p.exitcode != 0]
        if bad:
            sys.exit(f"error: PyTorch rank(s) {bad} failed (exit codes {[procs[r].exitcode for r in bad]})")
    seconds = result.get()
    B, T = c["batch_size"], c["seq_len"]
    tps = G * B * T * args.steps / seconds
    out = {"impl": "pytorch", "nproc": G, "threads": threads, "batch": B, "seq_len": T, "steps": args.steps,
           "step_s": round(seconds / args.steps, 5), "tokens_per_s": round(tps, 1), "torch": torch.__version__}
    if G > 1:
        out["parallel"] = "DistributedDataParallel (gloo)"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
