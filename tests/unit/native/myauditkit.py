"""MySQL sessions for the query-audit tap tests: packets, a random client and server pair
(what a server would answer: OK, ERR, result sets, PREPARE, multi-results, big
multi-packet messages), and a causal interleaving of the two in random chunks."""

from __future__ import annotations

import random
import struct

Chunk = tuple[int, bytes]  # (side, bytes)
MAX = 0xFFFFFF


def packets(payload: bytes, seq: int = 0) -> bytes:
    """One message as packets (split at 0xFFFFFF, an empty one after an exact multiple)."""
    out, i = b"", 0
    while True:
        part = payload[i:i + MAX]
        out += len(part).to_bytes(3, "little") + bytes([seq & 0xFF]) + part
        seq += 1
        i += MAX
        if len(part) < MAX:
            return out


def lenenc(v: int) -> bytes:
    if v < 0xFB:
        return bytes([v])
    if v < 1 << 16:
        return b"\xfc" + v.to_bytes(2, "little")
    if v < 1 << 24:
        return b"\xfd" + v.to_bytes(3, "little")
    return b"\xfe" + v.to_bytes(8, "little")


def query(sql: bytes) -> bytes:
    return packets(b"\x03" + sql)


def prepare(sql: bytes) -> bytes:
    return packets(b"\x16" + sql)


def execute(stmt: int, params: bytes = b"") -> bytes:
    """`params`: the block after the 10-byte head (NULL bitmap, bound flag, types, values)."""
    return packets(b"\x17" + struct.pack("<IBI", stmt, 0, 1) + params)


def long_and_string(n: int, text: bytes, bound: bool = True) -> bytes:
    """A parameter block: LONGLONG n, VAR_STRING text (types sent when `bound`)."""
    types = b"\x08\x00\xfd\x00" if bound else b""
    return b"\x00" + bytes([bound]) + types + struct.pack("<q", n) + lenenc(len(text)) + text


def close(stmt: int) -> bytes:
    return packets(b"\x19" + struct.pack("<I", stmt))


def init_db(name: bytes) -> bytes:
    return packets(b"\x02" + name)


def ok(affected: int = 0, status: int = 2, seq: int = 1) -> bytes:
    return packets(b"\x00" + lenenc(affected) + lenenc(0) + struct.pack("<HH", status, 0), seq)


def eof(status: int = 2, seq: int = 1) -> bytes:
    return packets(b"\xfe" + struct.pack("<HH", 0, status), seq)


def err(code: int, state: bytes, message: bytes, seq: int = 1) -> bytes:
    return packets(b"\xff" + struct.pack("<H", code) + b"#" + state + message, seq)


def result_set(rows: list[bytes], cols: int = 1, more: bool = False) -> bytes:
    out = packets(lenenc(cols), 1)
    out += b"".join(packets(b"\x03def" + b"\x00" * 8, 2 + i) for i in range(cols))
    out += eof()
    out += b"".join(packets(lenenc(len(r)) + r, 3) for r in rows)
    return out + eof(2 | (8 if more else 0))


def prepare_ok(stmt: int, cols: int, params: int) -> bytes:
    out = packets(b"\x00" + struct.pack("<IHHBH", stmt, cols, params, 0, 0), 1)
    for n in (params, cols):
        if n:
            out += b"".join(packets(b"\x03def" + b"\x00" * 8, 2) for _ in range(n)) + eof()
    return out


def session(rng: random.Random, steps: int = 12) -> list[tuple[bytes, bytes]]:
    """(what the client sends, what the server answers) per step."""
    out: list[tuple[bytes, bytes]] = []
    stmt = 0
    for _ in range(steps):
        k = rng.randrange(9)
        if k == 0:
            rows = [rng.randbytes(rng.randrange(40)) for _ in range(rng.randrange(5))]
            out.append((query(b"SELECT " + rng.randbytes(rng.randrange(30))), result_set(rows)))
        elif k == 1:
            out.append((query(b"UPDATE t SET a=1"), ok(rng.randrange(1 << 20))))
        elif k == 2:
            out.append((query(b"bad " + rng.randbytes(5)),
                        err(1064, b"42000", b"You have an error " * rng.randrange(1, 30))))
        elif k == 3:
            stmt += 1
            out.append((prepare(b"SELECT ?"), prepare_ok(stmt, rng.randrange(3),
                                                         rng.randrange(3))))
        elif k == 4:
            params = long_and_string(rng.randrange(9), rng.randbytes(rng.choice([3, 300, 20000])),
                                     rng.random() < 0.7) if rng.random() < 0.5 else b""
            out.append((execute(stmt, params), result_set([b"x"] * rng.randrange(4))))
        elif k == 5:
            out.append((close(stmt), b""))
        elif k == 6:
            out.append((init_db(b"db" + str(rng.randrange(9)).encode()), ok()))
        elif k == 7:  # a multi-statement: two results
            out.append((query(b"SELECT 1; SELECT 2"),
                        result_set([b"1"], more=True) + result_set([b"2"])))
        else:
            out.append((packets(b"\x0e"), ok()))  # COM_PING
    return out


def interleave(rng: random.Random, steps: list[tuple[bytes, bytes]], pipeline: bool
               ) -> list[Chunk]:
    """Client bytes always before their answer; pipelined: several commands ahead."""
    sent: list[bytes] = []
    chunks: list[Chunk] = []
    answers: list[bytes] = []
    for req, resp in steps:
        sent.append(req)
        answers.append(resp)
        if not pipeline or rng.random() < 0.4:
            for r in sent:
                chunks += cut(rng, 0, r)
            for a in answers:
                chunks += cut(rng, 1, a)
            sent, answers = [], []
    for r in sent:
        chunks += cut(rng, 0, r)
    for a in answers:
        chunks += cut(rng, 1, a)
    return chunks


def cut(rng: random.Random, side: int, data: bytes) -> list[Chunk]:
    out: list[Chunk] = []
    i = 0
    while i < len(data):
        k = rng.choice([1, 3, 4, 5, 17, 300, len(data)])
        out.append((side, data[i:i + k]))
        i += k
    return out


def run(tap: object, chunks: list[Chunk]) -> list[int]:
    back = [tap.feed(side, data, 1000 * (i + 1)) for i, (side, data) in  # type: ignore[attr-defined]
            enumerate(chunks)]
    tap.end(10 ** 9)  # type: ignore[attr-defined]
    return back


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        if not b:
            break
        b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)
