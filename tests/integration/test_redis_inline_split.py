"""The Redis inspector parses inline commands (`AUTH bob x` typed into a socket) as
redis-server does, or a quoted user name could slip past it: the same lines, split by
`wire/redis.split_inline` and by a real redis-server (RPUSH of the line's words, read
back with LRANGE), must agree — the words, or "unbalanced quotes" on both sides.
A NUL byte is not among them: redis-server then never finds the line's end (it waits
for more until the line is too long) and the inspector refuses such a line."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import pytest

from mwiproxy.devkit import redis as redis_kit
from mwiproxy.wire import redis as resp

pytestmark = pytest.mark.integration

TRICKY = [b'"b\\x6fb"', b"'it\\'s'", b'a"b c"d', b'"x"y', b"'x'y", b'"\\x4"', b'"\\xzz"',
          b'"a\\nb\\r\\t\\b\\a\\q"', b"'a\\nb'", b"\"open", b"'open", b'""', b"''",
          b'"\\"', b'"\\\\"', b"\t a \x0b b\x0c", b"'\\\\'"]
ALPHABET = b" \t\"'\\xn0a4F\x0b\r"


def _lines(seed: int, count: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    yield from TRICKY
    for _ in range(count):
        yield bytes(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12)))


MARK = resp.encode_command("ECHO", "end-of-case")
MARK_REPLY = b"$11\r\nend-of-case\r\n"


def _redis_split(sock_path: str, words: bytes) -> list[bytes] | None:
    """What redis-server made of `RPUSH l <words>` (None: a protocol error, after which
    it hangs up; []: no words, RPUSH's own error)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(sock_path)
        s.sendall(resp.encode_command("DEL", "l") + b"RPUSH l " + words + b"\r\n"
                  + resp.encode_command("LRANGE", "l", "0", "-1") + MARK)
        data = b""
        while not data.endswith(MARK_REPLY) and (chunk := s.recv(65536)):
            data += chunk
    rest = data[data.index(b"\r\n") + 2:]  # after DEL's reply
    if rest.startswith(b"-ERR Protocol error"):
        return None
    if rest.startswith(b"-"):
        return []
    return _array(rest[rest.index(b"\r\n") + 2:])


def _array(data: bytes) -> list[bytes]:
    head, _, rest = data.partition(b"\r\n")
    assert head.startswith(b"*"), data
    out = []
    for _ in range(int(head[1:])):
        size, _, rest = rest.partition(b"\r\n")
        n = int(size[1:])
        out.append(rest[:n])
        rest = rest[n + 2:]
    return out


@pytest.fixture(scope="module")
def server() -> Iterator[redis_kit.RedisServer]:
    if not redis_kit.available():
        pytest.skip("Redis not installed")
    srv = redis_kit.RedisServer().start()
    try:
        yield srv
    finally:
        srv.stop()


def test_inline_commands_split_as_redis_server_splits_them(server):
    checked = unbalanced = 0
    for words in _lines(seed=13, count=600):
        ours = resp.split_inline(b"RPUSH l " + words)
        theirs = _redis_split(str(server.socket), words)
        expected = None if ours is None else ours[2:]
        assert theirs == expected, (words, ours, theirs)
        checked += 1
        unbalanced += theirs is None
    assert checked > 600 and 0 < unbalanced < checked


def test_redis_server_never_ends_an_inline_line_with_a_nul_and_the_inspector_refuses_it(
        server):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1)
        s.connect(str(server.socket))
        s.sendall(b"ECHO a\0b\r\n" + MARK)
        with pytest.raises(TimeoutError):
            s.recv(100)  # neither the ECHO nor the command after it is answered
    with pytest.raises(resp.ProtocolError, match="NUL"):
        resp.parse_held(b"AUTH bob\0 x\r\n")
