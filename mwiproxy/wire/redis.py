"""Redis wire messages (RESP) the proxies need to refuse a connection.

The client speaks first: a command is an array of bulk strings
(`*2\\r\\n$4\\r\\nECHO\\r\\n$2\\r\\nhi\\r\\n`), or an inline command (one line of
space-separated words, as typed into telnet). A refusal answers each command with a
simple error, `-ERR <message>\\r\\n`, which clients raise as the command's error.

Parsing is bounded: a command over `max_size` bytes, or with over MAX_ARGS arguments,
is a ProtocolError, whether or not all of it has arrived yet.
"""

from __future__ import annotations

from dataclasses import dataclass

CRLF = b"\r\n"
MAX_ARGS = 1024
MAX_COMMAND = 64 * 1024
MAX_HEADER = 32  # `*<count>` / `$<length>` lines: a sign, ten digits, CRLF and slack


class ProtocolError(Exception):
    pass


@dataclass(frozen=True)
class Command:
    args: tuple[bytes, ...]
    size: int  # bytes taken off the input

    @property
    def name(self) -> str:
        return self.args[0].decode("utf-8", "replace").upper() if self.args else ""


def encode_command(*args: bytes | str) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


def error_reply(message: str) -> bytes:
    """A RESP simple error; `message` starts with its error code (e.g. "ERR ...").
    A simple error is one line, so line breaks become spaces."""
    line = message.replace("\r", " ").replace("\n", " ").encode("utf-8")
    return b"-" + line + CRLF


def parse_error_reply(data: bytes) -> str:
    if not data.startswith(b"-") or not data.endswith(CRLF) or CRLF in data[:-2]:
        raise ProtocolError("not one RESP simple error")
    return data[1:-2].decode("utf-8", "replace")


def parse_command(data: bytes, max_size: int = MAX_COMMAND) -> Command | None:
    """The first command in `data`, or None while it is incomplete."""
    if data[:1] == b"*":
        return _parse_array(data, max_size)
    return _parse_inline(data, max_size)


def _header(data: bytes, pos: int, max_size: int) -> tuple[bytes, int] | None:
    """A `*`/`$` header line at `pos` and the position after it (None: incomplete)."""
    limit = min(pos + MAX_HEADER, max_size)
    end = data.find(CRLF, pos, limit)
    if end < 0:
        if len(data) >= limit:
            raise ProtocolError(f"a Redis command of more than {max_size} bytes, or a "
                                "malformed header")
        return None
    return data[pos:end], end + 2


def _number(line: bytes, what: str) -> int:
    digits = line[1:] if line[:1] == b"-" else line
    if len(line) > 11 or not digits.isdigit():
        raise ProtocolError(f"malformed {what}: {line[:20]!r}")
    return int(line)


def _parse_array(data: bytes, max_size: int) -> Command | None:
    got = _header(data, 0, max_size)
    if got is None:
        return None
    count = _number(got[0][1:], "array length")
    if not 0 <= count <= MAX_ARGS:
        raise ProtocolError(f"a command of {count} arguments (at most {MAX_ARGS})")
    pos, args = got[1], []
    for _ in range(count):
        got = _header(data, pos, max_size)
        if got is None:
            return None
        header, pos = got
        if header[:1] != b"$":
            raise ProtocolError(f"expected a bulk string, got {header[:20]!r}")
        length = _number(header[1:], "bulk string length")
        end = pos + length
        if length < 0 or end + 2 > max_size:
            raise ProtocolError(f"a Redis command of more than {max_size} bytes")
        if len(data) < end + 2:
            return None
        if data[end:end + 2] != CRLF:
            raise ProtocolError("a bulk string does not end with CRLF")
        args.append(data[pos:end])
        pos = end + 2
    return Command(tuple(args), pos)


def _parse_inline(data: bytes, max_size: int) -> Command | None:
    # redis-server accepts a bare LF too; only the line end is looked for here
    end = data.find(b"\n", 0, max_size + 1)
    if end < 0:
        if len(data) > max_size:
            raise ProtocolError(f"a Redis command of more than {max_size} bytes")
        return None
    words = data[:end].rstrip(b"\r").split()
    if len(words) > MAX_ARGS:
        raise ProtocolError(f"a command of {len(words)} arguments (at most {MAX_ARGS})")
    return Command(tuple(words), end + 1)
