"""Golden test: recompute logits, loss (with z-loss) and every parameter gradient of the C++
model with the independent PyTorch model of tools/llama_ref.py, from the weights the C++ side
wrote, in float64 and float32, and fail on any difference beyond the stated tolerances."""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tools"))
import llama_ref  # noqa: E402

# float64: both sides compute the same formulas; differences come only from summation order
# (and RoPE tables, stored in float32 by both). float32: accumulated rounding over two layers.
TOLERANCES = {"f64": dict(rtol=1e-9, atol=1e-11), "f32": dict(rtol=2e-4, atol=2e-5)}


def main(directory):
    weights, _ = llama_ref.read_safetensors(os.path.join(directory, "model.safetensors"))
    golden, meta = llama_ref.read_safetensors(os.path.join(directory, "golden.safetensors"))
    cfg = llama_ref.Config(**json.loads(meta["config"]))
    z_weight = float(meta["z_loss_weight"])
    failures = []
    for tag, dtype in (("f64", torch.float64), ("f32", torch.float32)):
        torch.set_num_threads(1)
        model = llama_ref.Llama(cfg).to(dtype)
        model.load(weights)
        logits = model(golden["tokens"])
        total, ce, z = llama_ref.lm_loss(logits, golden["targets"], z_weight)
        total.backward()
        checks = [("logits", logits, golden[tag + ".logits"]), ("loss", total.reshape(1), golden[tag + ".loss"]),
                  ("ce", ce.reshape(1), golden[tag + ".ce"]), ("z", z.reshape(1), golden[tag + ".z"])]
        for name, p in model.named().items():
            checks.append(("grad." + name, p.grad, golden[tag + ".grad." + name]))
        tol = TOLERANCES[tag]
        worst = 0.0
        for name, ours, theirs in checks:
            ours = ours.detach().to(torch.float64)
            theirs = theirs.to(torch.float64)
            if ours.shape != theirs.shape:
                failures.append(f"{tag} {name}: shape {tuple(theirs.shape)} from C++, {tuple(ours.shape)} from PyTorch")
                continue
            err = ((ours - theirs).abs() - tol["rtol"] * ours.abs()).max().item()
            worst = max(worst, (ours - theirs).abs().max().item())
            if err > tol["atol"]:
                failures.append(f"{tag} {name}: max abs difference {(ours - theirs).abs().max().item():.3e} "
                                f"beyond rtol={tol['rtol']} atol={tol['atol']}")
        print(f"{tag}: {len(checks)} tensors compared (logits, loss, ce, z, {len(checks) - 4} gradients); "
              f"max abs difference {worst:.3e}; loss C++ {golden[tag + '.loss'].item():.10f} PyTorch {total.item():.10f}")
    for f in failures:
        print("MISMATCH", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
