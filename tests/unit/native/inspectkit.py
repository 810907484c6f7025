"""Streams for the inspection framers (Redis RESP, MySQL packets): mostly well-formed
commands, with the messages that are held, edge numbers and random damage; and the
decisions a framer takes on a stream in a given chunking."""

from __future__ import annotations

import random
import struct
from typing import Any

from mwiproxy._native.inspect_py import HOLD, MAX_HELD, PASS, VIOLATION

from .mongokit import mongo_message

Event = tuple[str, bytes]

NAMES = [b"AUTH", b"auth", b"AuTh", b"HELLO", b"hello", b"RESET", b"reset", b"GET", b"SET",
         b"PING", b"AUTHX", b"AUT", b"HELL", b"RESETS", b"", b"SELECT", b"\x00UTH"]
COUNTS = [b"0", b"-1", b"-0", b"00", b"01", b"1048576", b"1048577", b"-9223372036854775808",
          b"-9223372036854775809", b"9223372036854775808", b"+1", b"", b"-", b"1 "]
LENGTHS = [b"-1", b"0", b"00", b"536870912", b"536870913", b"4 ", b"x"]


def decisions(framer: Any, chunks: list[bytes]) -> list[Event]:
    """What `framer` decides on the stream fed as `chunks`: forwarded runs (merged),
    held messages and a violation, in order."""
    out: list[Event] = []

    def forward(data: bytes) -> None:
        if data and out and out[-1][0] == "fwd":
            out[-1] = ("fwd", out[-1][1] + data)
        elif data:
            out.append(("fwd", data))

    for chunk in chunks:
        view = memoryview(chunk)
        while True:
            status, used, fwd = framer.scan(view)
            forward(bytes(fwd))
            if status == VIOLATION:
                out.append(("violation", b""))
                return out
            if status == PASS:  # a buffered message went on
                forward(bytes(framer.held))
            elif status != HOLD:
                break
            else:
                out.append(("hold", bytes(framer.held)))
            view = view[used:]
    return out


def chunked(data: bytes, rng: random.Random) -> list[bytes]:
    """`data` cut at random points (sometimes at every byte)."""
    if len(data) < 300 and rng.random() < 0.1:
        return [data[i:i + 1] for i in range(len(data))]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 12)))) \
        if len(data) > 1 else []
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def _bulk(rng: random.Random, value: bytes) -> bytes:
    if rng.random() < 0.02:
        return b"$" + rng.choice(LENGTHS) + b"\r\n" + value + b"\r\n"
    return b"$%d\r\n%s\r\n" % (len(value), value)


def resp_command(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.1:  # inline
        return rng.choice([b"PING", b"AUTH pw", b"", b"GET k", b"x" * rng.randint(0, 90)]) + \
            rng.choice([b"\r\n", b"\n"])
    if roll < 0.14:
        return b"*" + rng.choice(COUNTS) + b"\r\n"
    args = [rng.choice(NAMES)] + [rng.randbytes(rng.choice([0, 1, 3, 12, 200]))
                                  for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.01:  # a value over the held limit, or a long one streaming
        args.append(b"v" * rng.choice([MAX_HELD - 20, MAX_HELD + 1, 70_000]))
    return b"*%d\r\n" % len(args) + b"".join(_bulk(rng, a) for a in args)


def mysql_packet(rng: random.Random) -> bytes:
    seq = 0 if rng.random() < 0.7 else rng.randrange(256)
    cmd = rng.choice([0x02, 0x11, 0x03, 0x0E, 0x16, rng.randrange(256)])
    body = bytes([cmd]) + rng.randbytes(rng.choice([0, 1, 5, 40, 300]))
    if rng.random() < 0.05:
        body = b""
    if rng.random() < 0.003:
        body = bytes([cmd]) + b"q" * rng.choice([MAX_HELD - 4, MAX_HELD - 3, 70_000])
    if rng.random() < 0.0005:  # a maximal packet: the next one continues it
        body = bytes([0x03]) + b"m" * (0xFFFFFF - 1)
    return struct.pack("<I", len(body))[:3] + bytes([seq]) + body


def stream(protocol: str, rng: random.Random) -> bytes:
    make = {"resp": resp_command, "mysql": mysql_packet, "mongodb": mongo_message}[protocol]
    data = bytearray(b"".join(make(rng) for _ in range(rng.randint(1, 6))))
    for _ in range(rng.choice([0, 0, 0, 1, 2])):  # damage
        if not data:
            break
        pos = rng.randrange(len(data))
        what = rng.random()
        if what < 0.4:
            data[pos] = rng.randrange(256)
        elif what < 0.7:
            data.insert(pos, rng.choice(b"*$\r\n\x00-0123"))
        else:
            del data[pos]
    if rng.random() < 0.2:
        data = data[:rng.randint(0, len(data))]
    return bytes(data)
