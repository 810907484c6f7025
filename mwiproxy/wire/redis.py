"""Redis wire messages (RESP): what the proxies need to refuse a connection, and to
read the commands the relay's inspector holds (`parse_held`, `split_inline`).

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


# -- what the inspector holds: inline commands as redis-server splits them -------------

INLINE_MAX = 64 * 1024  # redis-server's PROTO_INLINE_MAX_SIZE
_SPACE = b" \n\r\t\v\f"
_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b",
            ord("a"): b"\a"}
_HEX = b"0123456789abcdefABCDEF"


def split_inline(line: bytes) -> list[bytes] | None:
    """An inline command's arguments as redis-server reads them (its sdssplitargs:
    "double quotes" with \\xHH and \\n-style escapes, 'single quotes' with \\' only,
    a closing quote followed by a space or the end); None for unbalanced quotes, which
    redis-server answers with a protocol error and a hang-up."""
    line = line.split(b"\0", 1)[0]  # a C string there (parse_held refuses a NUL)
    args: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return args
        cur, inq, insq = bytearray(), False, False
        while True:
            c = line[i] if i < n else None
            if inq:
                if c is None:
                    return None
                if (c == 0x5C and i + 3 < n and line[i + 1] == ord("x")
                        and line[i + 2] in _HEX and line[i + 3] in _HEX):
                    cur.append(int(line[i + 2:i + 4], 16))
                    i += 3
                elif c == 0x5C and i + 1 < n:
                    i += 1
                    cur += _ESCAPES.get(line[i], bytes([line[i]]))
                elif c == ord('"'):
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None  # a closing quote must be followed by a space
                    i += 1
                    break
                else:
                    cur.append(c)
            elif insq:
                if c is None:
                    return None
                if c == 0x5C and i + 1 < n and line[i + 1] == ord("'"):
                    i += 1
                    cur.append(ord("'"))
                elif c == ord("'"):
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        return None
                    i += 1
                    break
                else:
                    cur.append(c)
            else:
                if c is None or c in b" \n\r\t":
                    break
                if c == ord('"'):
                    inq = True
                elif c == ord("'"):
                    insq = True
                else:
                    cur.append(c)
            i += 1
        args.append(bytes(cur))


def parse_held(message: bytes) -> list[bytes] | None:
    """The arguments of one whole command as the relay's inspector holds it (a
    multibulk, or an inline line with its line end); None: an inline line with
    unbalanced quotes. ProtocolError if it is not one well-formed command."""
    if message[:1] == b"*":
        command = _parse_array(message, len(message))
        if command is None or command.size != len(message):
            raise ProtocolError("a held message that is not one whole command")
        return list(command.args)
    if not message.endswith(b"\n") or b"\n" in message[:-1] or len(message) > INLINE_MAX:
        raise ProtocolError("a held message that is not one inline command")
    if b"\0" in message:  # redis-server looks for the line end with strchr: it would
        raise ProtocolError("a NUL byte in an inline command")  # wait forever
    line = message[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return split_inline(line)
