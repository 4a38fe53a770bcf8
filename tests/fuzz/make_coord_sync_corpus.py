#!/usr/bin/env python3
"""Writes the shared-state sync seeds of the coordinator fuzz targets (standard library only;
deterministic). The other coord_wire / coord_state seeds predate it and are checked in as is.

    python3 tests/fuzz/make_coord_sync_corpus.py

coord_wire/sync_report.bin, sync_elected.bin: one frame each (src/net/membership/wire.h, protocol 3).
coord_state/sync.bin: two peers form a view, report their digests (one stale), both report ok;
then a third reports for an unknown epoch. Records: u8 (conn | kind << 3), u16 length, payload.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
C2M_JOIN, C2M_UPDATE, C2M_OP_RESULT, C2M_SYNC_REPORT, M2C_SYNC_ELECTED = 16, 18, 21, 22, 35


def s(text):
    b = text.encode()
    return struct.pack("<I", len(b)) + b


def digest(name, dtype, nbytes, hi, lo):
    return s(name) + struct.pack("<BQQQ", dtype, nbytes, hi, lo)


def sync_report(epoch, op_id, revision, votes, buffers):
    return (struct.pack("<BQQQB", C2M_SYNC_REPORT, epoch, op_id, revision, votes) + struct.pack("<I", len(buffers)) +
            b"".join(digest(*b) for b in buffers))


def sync_elected(epoch, op_id, revision, sets, buffers, keep_own=()):
    out = struct.pack("<BQQQ", M2C_SYNC_ELECTED, epoch, op_id, revision) + struct.pack("<I", len(sets))
    for hs in sets:
        out += struct.pack("<I", len(hs)) + b"".join(struct.pack("<I", h) for h in hs)
    out += struct.pack("<I", len(buffers))
    for (name, dtype, nbytes, hi, lo, set_index) in buffers:
        out += digest(name, dtype, nbytes, hi, lo) + struct.pack("<I", set_index)
    out += struct.pack("<I", len(keep_own)) + b"".join(struct.pack("<I", p) for p in keep_own)
    return out


def join(address):
    empty_view = struct.pack("<QQI", 0, 0, 0)
    return struct.pack("<BI", C2M_JOIN, 0xFFFFFFFF) + s(address) + empty_view + struct.pack("<QQB", 0, 0, 0)


def frame(payload):
    return struct.pack("<II", 0x4643524D, len(payload)) + payload


def record(conn, payload):
    return struct.pack("<BH", conn & 7, len(payload)) + payload


def write(sub, name, data):
    d = os.path.join(HERE, "corpus", sub)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    bufs = [("opt.m", 1, 4096, 1, 2), ("weights", 3, 1 << 20, 3, 4)]
    # flags 3: votes, and keeps its own state (does not pull)
    write("coord_wire", "sync_report.bin", frame(sync_report(7, (1 << 32) | 1, 12, 3, bufs)))
    write("coord_wire", "sync_elected.bin",
          frame(sync_elected(7, (1 << 32) | 1, 12, [[0, 3], [3]], [("a", 1, 8, 5, 6, 0), ("b", 0, 0, 7, 8, 1)], [3])))
    op = (1 << 32) | 1  # epoch 1 (incarnation 0), round 1, first operation
    stale = [("opt.m", 1, 4096, 1, 2), ("weights", 3, 1 << 20, 9, 9)]
    seq = b"".join([
        record(1, join("a:1")), record(2, join("b:2")),
        record(1, struct.pack("<BQI", C2M_UPDATE, 0, 2)), record(2, struct.pack("<BQI", C2M_UPDATE, 0, 2)),
        record(1, sync_report(1, op, 12, 1, bufs)), record(2, sync_report(1, op, 11, 1, stale)),
        record(1, struct.pack("<BQQB", C2M_OP_RESULT, 1, op, 1) + s("")),
        record(2, struct.pack("<BQQB", C2M_OP_RESULT, 1, op, 1) + s("")),
        record(2, sync_report(9, op + 1, 1, 0, [])),
    ])
    write("coord_state", "sync.bin", seq)


if __name__ == "__main__":
    main()
