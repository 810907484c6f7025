"""The MySQL connection phase, as far as the proxies speak it: the server's greeting
(HandshakeV10), the client's SSL Request and HandshakeResponse41, the server's answers
to a sign-in (OK, ERR, AuthSwitchRequest, AuthMoreData), and the two commands the relay
holds for a verdict (COM_INIT_DB, COM_CHANGE_USER).

Every parser takes one packet's payload, already bounded by `read_packet`'s cap, and
raises ProtocolError on anything truncated or malformed; none loops over input it does
not consume. Protocol 4.1 only (CLIENT_PROTOCOL_41 and CLIENT_SECURE_CONNECTION): every
MySQL since 4.1 and every MariaDB speaks it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mwiproxy.wire.mysql import ProtocolError, packet, split_packet
from mwiproxy.wire.postgres import Reader

# capability flags
LONG_PASSWORD = 1 << 0  # MariaDB calls it CLIENT_MYSQL: set, extended caps are unused
FOUND_ROWS = 1 << 1
LONG_FLAG = 1 << 2
CONNECT_WITH_DB = 1 << 3
NO_SCHEMA = 1 << 4
COMPRESS = 1 << 5
LOCAL_FILES = 1 << 7
IGNORE_SPACE = 1 << 8
PROTOCOL_41 = 1 << 9
INTERACTIVE = 1 << 10
SSL = 1 << 11
IGNORE_SIGPIPE = 1 << 12
TRANSACTIONS = 1 << 13
RESERVED = 1 << 14
SECURE_CONNECTION = 1 << 15
MULTI_STATEMENTS = 1 << 16
MULTI_RESULTS = 1 << 17
PS_MULTI_RESULTS = 1 << 18
PLUGIN_AUTH = 1 << 19
CONNECT_ATTRS = 1 << 20
PLUGIN_AUTH_LENENC_DATA = 1 << 21
SESSION_TRACK = 1 << 23
DEPRECATE_EOF = 1 << 24

# What the proxy offers a client and passes on to a server that has it too. Left out,
# as they change the wire format or the relay's view of it in ways not honoured end to
# end: COMPRESS (the relay frames plaintext packets), SESSION_TRACK and DEPRECATE_EOF
# (OK/EOF formats a server may not share), LOCAL_FILES (LOAD DATA LOCAL: data packets
# whose sequence wraps to 0 would look like commands to the relay's inspector),
# CONNECT_ATTRS (not forwarded), the expired-password and query-attribute flags, and
# MariaDB's extended capabilities (LONG_PASSWORD set says "not MariaDB-extended").
PROXY_CAPS = (LONG_PASSWORD | FOUND_ROWS | LONG_FLAG | CONNECT_WITH_DB | IGNORE_SPACE
              | PROTOCOL_41 | INTERACTIVE | IGNORE_SIGPIPE | TRANSACTIONS | RESERVED
              | SECURE_CONNECTION | MULTI_STATEMENTS | MULTI_RESULTS | PS_MULTI_RESULTS
              | PLUGIN_AUTH | PLUGIN_AUTH_LENENC_DATA)
# what a server must have for the engine to sign in
SERVER_NEEDS = PROTOCOL_41 | SECURE_CONNECTION | SSL

NATIVE_PASSWORD = "mysql_native_password"
UTF8MB4_GENERAL_CI = 45
STATUS_AUTOCOMMIT = 0x0002
MAX_PACKET = 16 * 1024 * 1024
# the largest connection-phase packet read (greeting, response, auth answers)
HANDSHAKE_CAP = 16 * 1024
MAX_NAME = 256  # a user, database or plugin name: longer ones are refused as malformed

OK_HEADER, EOF_HEADER, AUTH_MORE_DATA = 0x00, 0xFE, 0x01
COM_INIT_DB, COM_CHANGE_USER = 0x02, 0x11
_FILLER23 = bytes(23)


@dataclass(frozen=True)
class Greeting:
    server_version: str
    connection_id: int
    capabilities: int
    charset: int
    status: int
    auth_data: bytes
    auth_plugin: str


@dataclass(frozen=True)
class SSLRequest:
    capabilities: int
    max_packet: int
    charset: int


@dataclass(frozen=True)
class HandshakeResponse:
    capabilities: int
    max_packet: int
    charset: int
    user: str
    auth_response: bytes
    database: str
    auth_plugin: str


@dataclass(frozen=True)
class AuthSwitch:
    plugin: str
    data: bytes


# -- reading ------------------------------------------------------------------------------


async def read_packet(reader: Reader, cap: int = HANDSHAKE_CAP) -> tuple[int, bytes]:
    """(sequence id, payload) of the next packet; ProtocolError over `cap` bytes (the
    header is checked before the payload is read)."""
    header = await reader.readexactly(4)
    length = int.from_bytes(header[:3], "little")
    if length > cap:
        raise ProtocolError(f"MySQL packet of {length} bytes exceeds {cap} during the "
                            "connection phase")
    return header[3], await reader.readexactly(length)


class _Cursor:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError(f"{self.what} is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def cstring(self, limit: int = MAX_NAME) -> bytes:
        end = self.data.find(b"\0", self.pos, self.pos + limit + 1)
        if end < 0:
            raise ProtocolError(f"{self.what}: a string is unterminated or over {limit} bytes")
        out = self.data[self.pos:end]
        self.pos = end + 1
        return out

    def lenenc(self) -> int:
        first = self.uint(1)
        if first < 0xFB:
            return first
        if first == 0xFC:
            return self.uint(2)
        if first == 0xFD:
            return self.uint(3)
        if first == 0xFE:
            return self.uint(8)
        raise ProtocolError(f"{self.what}: bad length-encoded integer")

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8") from None


# -- the greeting -------------------------------------------------------------------------


def parse_greeting(payload: bytes) -> Greeting:
    c = _Cursor(payload, "the server greeting")
    version = c.uint(1)
    if version == 0xFF:
        raise ProtocolError("the server sent an error instead of its greeting")
    if version != 10:
        raise ProtocolError(f"unsupported MySQL protocol version {version}")
    server_version = _text(c.cstring(), "the server version")
    connection_id = c.uint(4)
    data = c.take(8)
    c.take(1)
    caps = c.uint(2)
    charset, status = c.uint(1), c.uint(2)
    caps |= c.uint(2) << 16
    data_len = c.uint(1)
    c.take(10)
    if caps & SECURE_CONNECTION:
        data += c.take(max(13, data_len - 8))
        data = data.rstrip(b"\0") if len(data) > 20 else data
    plugin = ""
    if caps & PLUGIN_AUTH and not c.done:
        raw = c.rest()
        plugin = _text(raw.split(b"\0", 1)[0][:MAX_NAME], "the auth plugin name")
    return Greeting(server_version, connection_id, caps, charset, status, data, plugin)


def build_greeting(g: Greeting) -> bytes:
    """A HandshakeV10 payload (auth data of 20 bytes, as mysql_native_password's)."""
    if len(g.auth_data) != 20:
        raise ValueError("the scramble is 20 bytes")
    caps = g.capabilities | SECURE_CONNECTION | PROTOCOL_41
    version = g.server_version.encode("utf-8")
    if b"\0" in version or len(version) > MAX_NAME:
        raise ValueError("bad server version")
    plugin = g.auth_plugin.encode("ascii") if caps & PLUGIN_AUTH else b""
    return (bytes([10]) + version + b"\0" + struct.pack("<I", g.connection_id)
            + g.auth_data[:8] + b"\0" + struct.pack("<H", caps & 0xFFFF)
            + bytes([g.charset]) + struct.pack("<HH", g.status, caps >> 16)
            + bytes([21 if caps & PLUGIN_AUTH else 0]) + bytes(10)
            + g.auth_data[8:] + b"\0" + (plugin + b"\0" if plugin else b""))


# -- the client's first packet --------------------------------------------------------------


def is_ssl_request(payload: bytes) -> bool:
    """An SSL Request: the first 32 bytes of a HandshakeResponse41 with CLIENT_SSL, alone."""
    return len(payload) == 32 and bool(int.from_bytes(payload[:4], "little") & SSL)


def build_ssl_request(capabilities: int, charset: int = UTF8MB4_GENERAL_CI) -> bytes:
    return struct.pack("<IIB", capabilities | SSL, MAX_PACKET, charset) + _FILLER23


def parse_handshake_response(payload: bytes) -> HandshakeResponse:
    c = _Cursor(payload, "the client's handshake response")
    caps, max_packet, charset = c.uint(4), c.uint(4), c.uint(1)
    if not caps & PROTOCOL_41:
        raise ProtocolError("the client does not speak MySQL protocol 4.1")
    c.take(23)
    user = _text(c.cstring(), "the user name")
    if caps & PLUGIN_AUTH_LENENC_DATA:
        auth = c.take(c.lenenc())
    elif caps & SECURE_CONNECTION:
        auth = c.take(c.uint(1))
    else:
        auth = c.cstring()
    database = ""
    if caps & CONNECT_WITH_DB and not c.done:
        database = _text(c.cstring(), "the database name")
    plugin = ""
    if caps & PLUGIN_AUTH and not c.done:
        plugin = _text(c.cstring(), "the auth plugin name")
    # connection attributes (CONNECT_ATTRS) and anything after them are not read on
    return HandshakeResponse(caps, max_packet, charset, user, auth, database, plugin)


def build_handshake_response(r: HandshakeResponse) -> bytes:
    caps = r.capabilities
    if not caps & PROTOCOL_41 or caps & CONNECT_ATTRS:
        raise ValueError("only protocol 4.1, without connection attributes")
    out = bytearray(struct.pack("<IIB", caps, r.max_packet, r.charset) + _FILLER23)
    out += r.user.encode("utf-8") + b"\0"
    if caps & PLUGIN_AUTH_LENENC_DATA:
        if len(r.auth_response) >= 0xFB:
            raise ValueError("auth response too long")
        out += bytes([len(r.auth_response)]) + r.auth_response
    elif caps & SECURE_CONNECTION:
        out += bytes([len(r.auth_response)]) + r.auth_response
    else:
        out += r.auth_response + b"\0"
    if caps & CONNECT_WITH_DB:
        out += r.database.encode("utf-8") + b"\0"
    if caps & PLUGIN_AUTH:
        out += r.auth_plugin.encode("ascii") + b"\0"
    return bytes(out)


# -- the server's answers -------------------------------------------------------------------


def parse_auth_switch(payload: bytes) -> AuthSwitch:
    c = _Cursor(payload, "the server's AuthSwitchRequest")
    if c.uint(1) != EOF_HEADER:
        raise ProtocolError("not an AuthSwitchRequest")
    if c.done:  # the old form: switch to mysql_old_password
        return AuthSwitch("mysql_old_password", b"")
    plugin = _text(c.cstring(), "the auth plugin name")
    return AuthSwitch(plugin, c.rest().rstrip(b"\0"))


def ok_packet(sequence: int, status: int = STATUS_AUTOCOMMIT) -> bytes:
    """An OK_Packet: no rows, no insert id, `status`, no warnings."""
    return packet(b"\x00\x00\x00" + struct.pack("<HH", status, 0), sequence)


# -- commands the relay holds ----------------------------------------------------------------


def parse_command(message: bytes) -> tuple[int, bytes]:
    """(command byte, argument) of one whole client packet as the relay holds it
    (header included); ProtocolError if it is not exactly one packet."""
    split = split_packet(message)
    if split is None or split[1]:
        raise ProtocolError("not exactly one MySQL packet")
    payload = split[0].payload
    if not payload:
        raise ProtocolError("an empty command packet")
    return payload[0], payload[1:]


def init_db(schema: str) -> bytes:
    """COM_INIT_DB as a client sends it (sequence 0)."""
    return packet(bytes([COM_INIT_DB]) + schema.encode("utf-8"), 0)
