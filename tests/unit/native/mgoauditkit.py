"""MongoDB sessions for the query-audit tap tests: client messages (OP_MSG with document
sequences, OP_QUERY, OP_COMPRESSED, legacy), the replies a server would send (ok, errors,
cursors, writeErrors, OP_REPLY), interleaved in random chunks."""

from __future__ import annotations

import random
import struct
from typing import Any

import bson

from .myauditkit import Chunk, cut


def message(op: int, rid: int, body: bytes, to: int = 0) -> bytes:
    return struct.pack("<iiii", 16 + len(body), rid, to, op) + body


def op_msg(rid: int, doc: dict[str, Any], flags: int = 0, to: int = 0,
           seqs: tuple[tuple[str, list[dict[str, Any]]], ...] = (), seq_first: bool = False) -> bytes:
    body = b"\0" + bson.encode(doc)
    sections = b""
    for name, docs in seqs:
        payload = name.encode() + b"\0" + b"".join(bson.encode(d) for d in docs)
        sections += b"\1" + struct.pack("<i", 4 + len(payload)) + payload
    parts = sections + body if seq_first else body + sections
    out = struct.pack("<I", flags) + parts
    if flags & 1:
        out += b"\0\0\0\0"
    return message(2013, rid, out, to)


def op_query(rid: int, ns: str, doc: dict[str, Any]) -> bytes:
    return message(2004, rid, struct.pack("<I", 0) + ns.encode() + b"\0"
                   + struct.pack("<ii", 0, -1) + bson.encode(doc))


def op_reply(to: int, doc: dict[str, Any], flags: int = 0) -> bytes:
    return message(1, 0, struct.pack("<iqii", flags, 0, 0, 1) + bson.encode(doc), to)


def op_compressed(rid: int, inner: bytes, compressor: int = 2) -> bytes:
    return message(2012, rid, struct.pack("<iiB", 2013, len(inner), compressor) + inner)


def _doc(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in range(rng.randrange(0, 6)):
        k = rng.randrange(8 if depth < 3 else 5)
        out[f"k{i}"] = (rng.randrange(-5, 5), "s" * rng.choice([0, 3, 300]), 1.5, None, True,
                        rng.randbytes(rng.randrange(20)),
                        _doc(rng, depth + 1) if k == 6 else 0,
                        [_doc(rng, depth + 1) for _ in range(3)] if k == 7 else 0)[k]
    return out


def session(rng: random.Random) -> list[Chunk]:
    """A client and a server in turn: each request then (mostly) its reply."""
    out: list[Chunk] = []
    for rid in range(1, rng.randrange(2, 12)):
        k = rng.randrange(9)
        coll = rng.choice(["orders", "x" * 200, ""])
        if k == 0:
            req = op_msg(rid, {"find": coll, "filter": _doc(rng), "$db": "app"})
        elif k == 1:
            req = op_msg(rid, {"insert": coll, "$db": "app"},
                         seqs=(("documents", [_doc(rng) for _ in range(rng.randrange(4))]),),
                         seq_first=rng.random() < 0.3, flags=rng.choice([0, 1, 2]))
        elif k == 2:
            req = op_query(rid, rng.choice(["admin.$cmd", "app.coll", "nodot"]),
                           {"isMaster": 1, "speculativeAuthenticate": {"db": "x"}}
                           if rng.random() < 0.5 else {"ping": 1})
        elif k == 3:
            req = op_msg(rid, {"saslStart": 1, "payload": b"secret", "$db": "admin"})
        elif k == 4:
            req = op_compressed(rid, op_msg(rid, {"ping": 1, "$db": "a"}))
        elif k == 5:
            req = op_msg(rid, {"find": coll, "filter": {"big": "v" * rng.choice([100, 20000])},
                               "$db": "app"})
        elif k == 6:
            req = message(2002, rid, b"\0" * rng.randrange(30))
        elif k == 7:
            req = op_msg(rid, {"createUser": "bob", "pwd": "hunter2", "$db": "admin"})
        else:
            req = op_msg(rid, {"aggregate": coll, "pipeline": [_doc(rng)], "$db": "app"})
        out += cut(rng, 0, req)
        if rng.random() < 0.15:
            continue
        r = rng.randrange(6)
        if r == 0:
            rep = op_msg(0, {"ok": 1.0, "n": rng.randrange(10)}, to=rid)
        elif r == 1:
            rep = op_msg(0, {"ok": 0.0, "errmsg": "bad " * rng.randrange(100), "code": 2,
                             "codeName": "BadValue"}, to=rid)
        elif r == 2:
            batch = [_doc(rng) for _ in range(rng.randrange(0, 200))]
            rep = op_msg(0, {"cursor": {"firstBatch": batch, "id": 0, "ns": "app.x"},
                             "ok": 1}, to=rid)
        elif r == 3:
            rep = op_msg(0, {"n": 0, "writeErrors": [{"index": 0, "code": 11000,
                                                       "errmsg": "dup key"}], "ok": 1}, to=rid)
        elif r == 4:
            rep = op_reply(rid, {"$err": "old", "code": 7}, flags=rng.choice([0, 2]))
        else:
            rep = op_msg(0, {"ok": rng.choice([True, False, 1, 0]),
                             "cursor": {"nextBatch": [], "id": 5}}, to=rid + rng.randrange(2))
        out += cut(rng, 1, rep)
    return out
