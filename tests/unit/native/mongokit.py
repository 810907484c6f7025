"""MongoDB wire messages for the inspection framer's tests: OP_MSG with random BSON
(every element type, nested documents, document sequences), the messages that must be
held (auth commands, other databases, other opcodes, flags), sizes around the 64 KiB
window, and damage."""

from __future__ import annotations

import random
import struct

from mwiproxy._native.inspect_py import MAX_HELD

ALLOWED = ("app", "tést")
DBS = [b"app", "tést".encode(), b"admin", b"ap", b"appx", b"", b"app\x00x", b"other"]
COMMANDS = [b"find", b"insert", b"ping", b"find", b"insert", b"ping", b"authenticate",
            b"saslStart", b"saslContinue", b"logout", b"Logout", b"saslstart", b"$db",
            b"hello", b"isMaster", b"aggregate", b"mapReduce", b"getnonce", b"mapReducex",
            b""]
OPCODES = [2013] * 40 + [2004, 2012, 2010, 1, 0]
FLAGS = [0] * 30 + [2, 0x10000, 0x10002, 1, 4, 0x8000, 0x80000000]


def cstring(rng: random.Random) -> bytes:
    names = [b"a", b"x" * rng.randint(0, 20), b"lsid", b"filter", b"$dbx", b"$d"]
    return (b"$db" if rng.random() < 0.01 else rng.choice(names)) + b"\0"


def _string(value: bytes) -> bytes:
    return struct.pack("<i", len(value) + 1) + value + b"\0"


def value(rng: random.Random, depth: int) -> tuple[int, bytes]:
    """A BSON value of a random type: (type byte, encoding)."""
    t = rng.choice([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C,
                    0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x12, 0x13, 0x7F, 0xFF])
    fixed = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8,
             0x12: 8, 0x13: 16, 0x7F: 0, 0xFF: 0}
    if t in fixed:
        return t, rng.randbytes(fixed[t])
    if t in (0x02, 0x0D, 0x0E):
        return t, _string(rng.randbytes(rng.choice([0, 3, 30])))
    if t in (0x03, 0x04):
        return t, document(rng, depth + 1) if depth < 3 else b"\x05\0\0\0\0"
    if t == 0x05:
        data = rng.randbytes(rng.choice([0, 5, 16]))
        return t, struct.pack("<i", len(data)) + bytes([rng.randrange(256)]) + data
    if t == 0x0B:
        return t, cstring(rng) + cstring(rng)
    if t == 0x0C:
        return t, _string(b"ns") + rng.randbytes(12)
    code, scope = _string(b"f()"), b"\x05\0\0\0\0"
    return t, struct.pack("<i", 4 + len(code) + len(scope)) + code + scope


def document(rng: random.Random, depth: int, elements: list[bytes] | None = None) -> bytes:
    body = b"".join(elements) if elements is not None else b"".join(
        bytes([t]) + cstring(rng) + v
        for t, v in (value(rng, depth) for _ in range(rng.randint(0, 4))))
    return struct.pack("<i", len(body) + 5) + body + b"\0"


def element(rng: random.Random) -> bytes:
    t, v = value(rng, 1)
    return bytes([t]) + cstring(rng) + v


def db_element(rng: random.Random) -> bytes:
    if rng.random() < 0.05:
        t, v = value(rng, 1)
        return bytes([t]) + b"$db\0" + v
    name = rng.choice(DBS) if rng.random() < 0.3 else rng.choice(ALLOWED).encode()
    return b"\x02$db\0" + _string(name)


def body(rng: random.Random, big: int = 0) -> bytes:
    elements = [b"\x10" + rng.choice(COMMANDS) + b"\0" + b"\1\0\0\0"]
    elements += [element(rng) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.9:
        elements.insert(rng.randint(1, len(elements)), db_element(rng))
    if rng.random() < 0.05:
        elements.insert(rng.randint(0, len(elements)), db_element(rng))
    if big:  # a large value before or after `$db`
        elements.insert(rng.randint(1, len(elements)), b"\x05blob\0" + struct.pack(
            "<i", big) + b"\0" + b"b" * big)
    return document(rng, 0, elements)


def sequence(rng: random.Random, big: int = 0) -> bytes:
    docs = b"".join(document(rng, 1) for _ in range(rng.randint(0, 3)))
    if big:
        docs += document(rng, 1, [b"\x05d\0" + struct.pack("<i", big) + b"\0" + b"s" * big])
    payload = b"documents\0" + docs
    return b"\x01" + struct.pack("<i", len(payload) + 4) + payload


def op_msg(rng: random.Random) -> bytes:
    big = rng.choice([MAX_HELD - 200, MAX_HELD + 10, 100_000]) if rng.random() < 0.02 else 0
    where = rng.random()
    sections = [b"\x00" + body(rng, big if where < 0.3 else 0)]
    for _ in range(rng.choice([0, 0, 1, 2])):
        sections.insert(rng.randint(0, len(sections)), sequence(rng))
    if big and where >= 0.3:
        sections.insert(rng.randint(0, len(sections)), sequence(rng, big))
    if rng.random() < 0.03:
        sections.append(rng.choice([b"\x00" + body(rng), b"\x02" + body(rng)]))
    payload = struct.pack("<I", rng.choice(FLAGS)) + b"".join(sections)
    if rng.random() < 0.05:
        payload = payload[:rng.randint(0, len(payload))]
    return header(rng, 16 + len(payload), rng.choice(OPCODES)) + payload


def header(rng: random.Random, length: int, opcode: int) -> bytes:
    if rng.random() < 0.03:
        length = rng.choice([0, 15, 16, length - 1, length + 1, -1, 2**31 - 1])
    return struct.pack("<iiii", length, rng.randrange(2**31), 0, opcode)


def mongo_message(rng: random.Random) -> bytes:
    if rng.random() < 0.05:  # a legacy or other opcode, or a bare header
        payload = rng.randbytes(rng.choice([0, 4, 40]))
        return header(rng, 16 + len(payload), rng.choice(OPCODES)) + payload
    return op_msg(rng)
