#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (standard library only; output is deterministic).

    python3 tests/fuzz/make_corpus.py        # rewrites tests/fuzz/corpus/{safetensors,shard}/

Seeds are small valid files covering every dtype, metadata, empty and scalar tensors, several
tensors, plus a few near-misses (truncated, overlapping) so that mutations start on both sides of
each check.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape, data bytes) in data order."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors)


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def filled(dtype, shape):
    return bytes((i * 37 + 11) % 256 for i in range(numel(shape) * DTYPE_SIZE[dtype]))


def shard(tokens, vocab, token_bytes=None, version=1):
    token_bytes = token_bytes or (2 if vocab <= 65536 else 4)
    fmt = "<H" if token_bytes == 2 else "<I"
    header = b"MRDNTOK\0" + struct.pack("<IIQII", version, token_bytes, len(tokens), vocab, 0)
    return header + b"".join(struct.pack(fmt, t) for t in tokens)


def write(directory, name, data):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def main():
    st = os.path.join(HERE, "corpus", "safetensors")
    write(st, "tiny.safetensors", safetensors([("a", "F32", [2], struct.pack("<2f", 1.0, 2.0))], {"k": "v"}))
    write(st, "all_dtypes.safetensors",
          safetensors([(d.lower(), d, [2, 3], filled(d, [2, 3])) for d in DTYPE_SIZE], {"format": "meridian-1", "step": "7"}))
    write(st, "empty_and_scalar.safetensors",
          safetensors([("empty", "F32", [0, 4], b""), ("scalar", "F64", [], filled("F64", []))]))
    write(st, "empty_header.safetensors", safetensors([]))
    write(st, "metadata_only.safetensors", safetensors([], {"config_hash": "0123456789abcdef"}))
    write(st, "unpadded.safetensors", safetensors([("x", "U8", [3], b"xyz")], pad=False))
    good = safetensors([("w", "BF16", [4, 4], filled("BF16", [4, 4]))])
    write(st, "truncated.safetensors", good[:-3])
    overlap = b'{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}'
    write(st, "overlap.safetensors", struct.pack("<Q", len(overlap)) + overlap + b"abcdef")

    sh = os.path.join(HERE, "corpus", "shard")
    write(sh, "bytes.tok", shard([256] + list(b"hello world") + [256] + list(b"bye"), 259))
    write(sh, "wide.tok", shard([0, 65535, 65536, 128255], 128256))
    write(sh, "empty.tok", shard([], 259))
    write(sh, "truncated.tok", shard(list(range(20)), 259)[:-5])
    write(sh, "version2.tok", shard([1, 2, 3], 259, version=2))


if __name__ == "__main__":
    main()
