"""An independent PyTorch implementation of the Llama-3 decoder, written from the formulas of
Hugging Face transformers' LlamaForCausalLM (rotate-half RoPE, repeat_kv GQA, SwiGLU, RMSNorm),
plus a minimal safetensors reader. Used by the golden test and the step benchmark; it shares no
code with the C++ side. Runs on Debian's python3-torch (1.13) with no other package."""

import json
import math
import struct

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


def read_safetensors(path):
    """Returns ({name: tensor}, metadata). Raises ValueError on a malformed file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, e in header.items():
        begin, end = e["data_offsets"]
        raw = bytearray(data[base + begin:base + end])
        t = torch.frombuffer(raw, dtype=DTYPES[e["dtype"]]) if raw else torch.empty(0, dtype=DTYPES[e["dtype"]])
        out[name] = t.reshape(e["shape"]).clone()
    return out, meta


class Config:
    def __init__(self, vocab_size, dim, n_layers, n_heads, n_kv_heads, ffn_dim, rope_theta, norm_eps, max_seq_len):
        self.vocab_size, self.dim, self.n_layers = vocab_size, dim, n_layers
        self.n_heads, self.n_kv_heads, self.ffn_dim = n_heads, n_kv_heads, ffn_dim
        self.rope_theta, self.norm_eps, self.max_seq_len = rope_theta, norm_eps, max_seq_len


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope_tables(T, D, theta, dtype):
    # Angles in float64, tables stored in float32 (as Hugging Face and Meridian store them).
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    ang = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos().float().to(dtype), emb.sin().float().to(dtype)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat([-x2, x1], dim=-1)


class Llama(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        C, D = cfg.dim, cfg.dim // cfg.n_heads
        p = torch.nn.ParameterDict()
        self.names = ["model.embed_tokens.weight"]
        shapes = {"model.embed_tokens.weight": (cfg.vocab_size, C)}
        for i in range(cfg.n_layers):
            pre = f"model.layers.{i}."
            shapes.update({
                pre + "input_layernorm.weight": (C,),
                pre + "self_attn.q_proj.weight": (cfg.n_heads * D, C),
                pre + "self_attn.k_proj.weight": (cfg.n_kv_heads * D, C),
                pre + "self_attn.v_proj.weight": (cfg.n_kv_heads * D, C),
                pre + "self_attn.o_proj.weight": (C, cfg.n_heads * D),
                pre + "post_attention_layernorm.weight": (C,),
                pre + "mlp.gate_proj.weight": (cfg.ffn_dim, C),
                pre + "mlp.up_proj.weight": (cfg.ffn_dim, C),
                pre + "mlp.down_proj.weight": (C, cfg.ffn_dim),
            })
        shapes["model.norm.weight"] = (C,)
        shapes["lm_head.weight"] = (cfg.vocab_size, C)
        self.shapes = shapes
        self.params = torch.nn.ParameterList()
        self.index = {}
        for name, shape in shapes.items():
            self.index[name] = len(self.params)
            self.params.append(torch.nn.Parameter(torch.randn(shape) * 0.02 if len(shape) == 2 else torch.ones(shape)))

    def p(self, name):
        return self.params[self.index[name]]

    def named(self):
        return {name: self.p(name) for name in self.shapes}

    def load(self, tensors):
        with torch.no_grad():
            for name in self.shapes:
                self.p(name).copy_(tensors[name])

    def forward(self, tokens):
        cfg = self.cfg
        B, T = tokens.shape
        H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.dim // cfg.n_heads
        x = self.p("model.embed_tokens.weight")[tokens]
        cos, sin = rope_tables(T, D, cfg.rope_theta, x.dtype)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        for i in range(cfg.n_layers):
            pre = f"model.layers.{i}."
            h = rms_norm(x, self.p(pre + "input_layernorm.weight"), cfg.norm_eps)
            q = (h @ self.p(pre + "self_attn.q_proj.weight").t()).view(B, T, H, D).transpose(1, 2)
            k = (h @ self.p(pre + "self_attn.k_proj.weight").t()).view(B, T, Hkv, D).transpose(1, 2)
            v = (h @ self.p(pre + "self_attn.v_proj.weight").t()).view(B, T, Hkv, D).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k = k.repeat_interleave(H // Hkv, dim=1)
            v = v.repeat_interleave(H // Hkv, dim=1)
            att = (q @ k.transpose(-2, -1)) / math.sqrt(D)
            att = att.masked_fill(mask, float("-inf")).softmax(-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, H * D)
            x = x + y @ self.p(pre + "self_attn.o_proj.weight").t()
            h = rms_norm(x, self.p(pre + "post_attention_layernorm.weight"), cfg.norm_eps)
            gate = h @ self.p(pre + "mlp.gate_proj.weight").t()
            up = h @ self.p(pre + "mlp.up_proj.weight").t()
            x = x + (torch.nn.functional.silu(gate) * up) @ self.p(pre + "mlp.down_proj.weight").t()
        x = rms_norm(x, self.p("model.norm.weight"), cfg.norm_eps)
        return x @ self.p("lm_head.weight").t()


def lm_loss(logits, targets, z_loss_weight):
    """Mean cross-entropy plus z_loss_weight * mean(logsumexp(logits)^2); returns (total, ce, z)."""
    flat = logits.reshape(-1, logits.shape[-1])
    ce = torch.nn.functional.cross_entropy(flat, targets.reshape(-1))
    z = torch.logsumexp(flat, dim=-1).pow(2).mean()
    return ce + z_loss_weight * z, ce, z
