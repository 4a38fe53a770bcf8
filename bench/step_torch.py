"""The PyTorch (Python) side of the inner-step benchmark: the same Llama shape, the same
training step (forward, cross-entropy + z-loss, backward, clip, AdamW) on synthetic tokens, the
same thread count, timed the same way as `meridian bench step`. Prints one JSON line."""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import llama_ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="JSON of the resolved model/train shape")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, required=True)
    args = ap.parse_args()
    c = json.loads(args.config)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = llama_ref.Config(c["vocab_size"], c["dim"], c["n_layers"], c["n_heads"], c["n_kv_heads"], c["ffn_dim"],
                           c["rope_theta"], c["norm_eps"], c["max_seq_len"])
    model = llama_ref.Llama(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    B, T = c["batch_size"], c["seq_len"]

    def step():
        tokens = torch.randint(cfg.vocab_size, (B, T))
        targets = torch.randint(cfg.vocab_size, (B, T))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        total, ce, _ = llama_ref.lm_loss(model(tokens), targets, 2e-4)
        total.backward()
        ce.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    seconds = sum(step() for _ in range(args.steps))
    tps = B * T * args.steps / seconds
    print(json.dumps({"impl": "pytorch", "threads": args.threads, "batch": B, "seq_len": T, "steps": args.steps,
                      "step_s": round(seconds / args.steps, 5), "tokens_per_s": round(tps, 1),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
