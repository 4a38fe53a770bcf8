#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz_bpe_load target (standard library only; deterministic).

    python3 tests/fuzz/make_bpe_corpus.py     # rewrites tests/fuzz/corpus/bpe_load/

Seeds: a small valid tokenizer.json (256 byte tokens, a few merges, added specials, the Llama-3
Split regex), the same vocabulary as a tiktoken ranks file, and near-misses (a merge of unknown
tokens, a ranks line without a rank, a GPT-2 style ByteLevel pre-tokenizer).
"""
import base64
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "bpe_load")
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
EXTRA = [b"ab", b"bc", b"abc", b" a", b" ab", b"  ", b"\xc3\xa9"]
MERGES = [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b" ", b"a"), (b" a", b"b"), (b" ", b" "), (b"\xc3", b"\xa9")]
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]


def byte_level_table():
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tokenizer_json(pre_tokenizer, merges=MERGES):
    table = byte_level_table()
    bl = lambda bs: "".join(table[b] for b in bs)
    vocab = {bl(bytes([b])): b for b in range(256)}
    for i, t in enumerate(EXTRA):
        vocab[bl(t)] = 256 + i
    added = [{"id": 256 + len(EXTRA) + i, "content": s, "special": True} for i, s in enumerate(SPECIALS)]
    doc = {"version": "1.0", "normalizer": None, "added_tokens": added, "pre_tokenizer": pre_tokenizer,
           "model": {"type": "BPE", "ignore_merges": True, "vocab": vocab,
                     "merges": [bl(l) + " " + bl(r) for l, r in merges]}}
    return json.dumps(doc, ensure_ascii=False).encode()


def ranks(lines_extra=b""):
    lines = [base64.b64encode(bytes([b])) + b" " + str(b).encode() for b in range(256)]
    lines += [base64.b64encode(t) + b" " + str(256 + i).encode() for i, t in enumerate(EXTRA)]
    return b"\n".join(lines) + b"\n" + lines_extra


def main():
    os.makedirs(OUT, exist_ok=True)
    split = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3}, "behavior": "Isolated"},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}
    seeds = {
        "llama3_style.json": tokenizer_json(split),
        "gpt2_style.json": tokenizer_json({"type": "ByteLevel", "add_prefix_space": False}),
        "bad_merge.json": tokenizer_json(split, MERGES + [(b"x", b"yz")]),
        "ranks.tiktoken": ranks(),
        "ranks_bad_line.tiktoken": ranks(b"YWJj\n"),
    }
    for name, data in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
