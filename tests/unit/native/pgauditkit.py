"""PostgreSQL sessions for the query-audit tap tests: messages, a random client and
server pair (what a server would answer, pipelining and errors included), and a
causal interleaving of the two in random chunks."""

from __future__ import annotations

import random
import struct

Chunk = tuple[int, bytes]  # (side, bytes)


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack(">I", len(body) + 4) + body


def cstr(s: str | bytes) -> bytes:
    return (s.encode() if isinstance(s, str) else s) + b"\0"


def query(sql: str | bytes) -> bytes:
    return msg(b"Q", cstr(sql))


def parse(name: str, sql: str) -> bytes:
    return msg(b"P", cstr(name) + cstr(sql) + b"\0\0")


def bind(portal: str, name: str, params: list[bytes | None], formats: tuple[int, ...] = ()
         ) -> bytes:
    body = cstr(portal) + cstr(name) + struct.pack(">h", len(formats))
    body += b"".join(struct.pack(">h", f) for f in formats)
    body += struct.pack(">h", len(params))
    for p in params:
        body += struct.pack(">i", -1) if p is None else struct.pack(">i", len(p)) + p
    return msg(b"B", body + b"\0\0")


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return msg(b"E", cstr(portal) + struct.pack(">i", max_rows))


def close(kind: str, name: str) -> bytes:
    return msg(b"C", kind.encode() + cstr(name))


def describe(kind: str, name: str) -> bytes:
    return msg(b"D", kind.encode() + cstr(name))


def function_call(oid: int, args: list[bytes | None]) -> bytes:
    body = struct.pack(">ih", oid, 0) + struct.pack(">h", len(args))
    for a in args:
        body += struct.pack(">i", -1) if a is None else struct.pack(">i", len(a)) + a
    return msg(b"F", body + b"\0\0")


SYNC = msg(b"S")
FLUSH = msg(b"H")
RFQ = msg(b"Z", b"I")


def row(*values: bytes) -> bytes:
    body = struct.pack(">h", len(values))
    for v in values:
        body += struct.pack(">i", len(v)) + v
    return msg(b"D", body)


def complete(tag: str) -> bytes:
    return msg(b"C", cstr(tag))


def error(sqlstate: str, message: str) -> bytes:
    return msg(b"E", b"SERROR\0" + b"C" + cstr(sqlstate) + b"M" + cstr(message) + b"\0")


def _rows(rng: random.Random, n: int) -> bytes:
    return msg(b"T", b"\0\1" + b"x\0" + b"\0" * 18) + b"".join(
        row(str(rng.randrange(10**6)).encode()) for _ in range(n))


def session(rng: random.Random, steps: int = 12) -> list[tuple[bytes, bytes]]:
    """(client bytes, the server's answer) per step; a step is a simple query, an
    extended batch (maybe failing, so the rest of it is skipped) or a function call."""
    out: list[tuple[bytes, bytes]] = []
    for _ in range(steps):
        kind = rng.random()
        if kind < 0.35:
            n = rng.randrange(4)
            sql = "select " + "x" * rng.choice([1, 30, 20000])
            fails = rng.random() < 0.2
            answer = error("42P01", "no such table") if fails else (
                _rows(rng, n) + complete(f"SELECT {n}") if rng.random() < 0.9
                else msg(b"I"))
            out.append((query(sql), answer + RFQ))
        elif kind < 0.85:
            client, server = b"", b""
            failed = False
            for _ in range(rng.randrange(1, 4)):
                name = rng.choice(["", "s1", "stmt_" + "n" * 200])
                params = [rng.choice([None, b"", b"v" * rng.choice([1, 300])])
                          for _ in range(rng.choice([0, 1, 3, 70]))]
                client += parse(name, "select $1") + bind("", name, params, (0,) * rng.randrange(2))
                client += describe("P", "") + execute("", rng.choice([0, 0, 2]))
                if failed:
                    continue
                if rng.random() < 0.15:
                    server += error("22P02", "bad input")
                    failed = True
                    continue
                n = rng.randrange(4)
                server += msg(b"1") + msg(b"2") + msg(b"T", b"\0\0") + b"".join(
                    row(b"1") for _ in range(n)) + complete(f"SELECT {n}")
            if rng.random() < 0.2:
                client += close("S", "s1")
                if not failed:
                    server += msg(b"3")
            out.append((client + rng.choice([b"", FLUSH]) + SYNC, server + RFQ))
        else:
            out.append((function_call(1598, [b"\0\0\0\1"]),
                        msg(b"V", b"\0\0\0\4abcd") + RFQ))
    return out


def interleave(rng: random.Random, steps: list[tuple[bytes, bytes]], pipeline: bool
               ) -> list[Chunk]:
    """Random chunks of both sides in an order a relay could see: a server byte never
    before the client bytes it answers (pipelined: the client may run ahead)."""
    client = b"".join(c for c, _ in steps)
    server = b"".join(s for _, s in steps)
    # server bytes of step i may come once the client sent step i whole
    gates = []
    c_end = s_end = 0
    for c, s in steps:
        c_end += len(c)
        s_end += len(s)
        gates.append((c_end, s_end))
    ci = si = 0
    out: list[Chunk] = []
    while ci < len(client) or si < len(server):
        allowed = max((se for ce, se in gates if ce <= ci), default=0)
        can_server = si < allowed
        can_client = ci < len(client) and (pipeline or si >= allowed)
        if can_server and (not can_client or rng.random() < 0.5):
            k = min(allowed - si, rng.choice([1, 3, 17, 500, 65536]))
            out.append((1, server[si:si + k]))
            si += k
        elif can_client:
            k = rng.choice([1, 2, 5, 64, 4096, 65536])
            out.append((0, client[ci:ci + k]))
            ci += k
        else:
            break
    return out


def run(tap: object, chunks: list[Chunk], *, clock: bool = True) -> list[int]:
    """Feed `chunks` to a tap (either build): what each feed returned."""
    back = [tap.feed(side, data, i * 1000 if clock else 0)  # type: ignore[attr-defined]
            for i, (side, data) in enumerate(chunks)]
    tap.end(len(chunks) * 1000 if clock else 0)  # type: ignore[attr-defined]
    return back


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.random()
        if not b or op < 0.4:
            b[rng.randrange(len(b) + 1):0] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6)))
        elif op < 0.8:
            b[rng.randrange(len(b))] = rng.randrange(256)
        else:
            i = rng.randrange(len(b))
            del b[i:i + rng.randrange(1, 8)]
    return bytes(b)
