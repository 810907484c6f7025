"""The MySQL connection-phase codecs: what is built parses back, and arbitrary bytes
either parse or raise ProtocolError (bounded: no other exception, nothing read past the
connection phase's cap)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy.wire import mysql
from mwiproxy.wire import mysql_handshake as hs

names = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                max_size=40)
scrambles = st.binary(min_size=20, max_size=20).map(lambda b: bytes(1 + x % 126 for x in b))


@given(version=names, conn_id=st.integers(0, 0xFFFFFFFF), caps=st.integers(0, 0xFFFFFFFF),
       charset=st.integers(0, 255), status=st.integers(0, 0xFFFF), scramble=scrambles)
def test_greeting_round_trip(version, conn_id, caps, charset, status, scramble):
    built = hs.build_greeting(hs.Greeting(version, conn_id, caps, charset, status, scramble,
                                          hs.NATIVE_PASSWORD))
    got = hs.parse_greeting(built)
    assert got.server_version == version and got.connection_id == conn_id
    assert got.capabilities == caps | hs.SECURE_CONNECTION | hs.PROTOCOL_41
    assert (got.charset, got.status, got.auth_data) == (charset, status, scramble)
    assert got.auth_plugin == (hs.NATIVE_PASSWORD if caps & hs.PLUGIN_AUTH else "")


@given(caps=st.integers(0, 0xFFFFFFFF), user=names, database=names,
       auth=st.binary(max_size=64), charset=st.integers(0, 255))
def test_handshake_response_round_trip(caps, user, database, auth, charset):
    caps = (caps | hs.PROTOCOL_41) & ~hs.CONNECT_ATTRS
    if not caps & (hs.SECURE_CONNECTION | hs.PLUGIN_AUTH_LENENC_DATA):
        auth = auth.replace(b"\0", b"")
    r = hs.HandshakeResponse(caps, hs.MAX_PACKET, charset, user, auth, database,
                             hs.NATIVE_PASSWORD)
    got = hs.parse_handshake_response(hs.build_handshake_response(r))
    assert (got.user, got.auth_response, got.charset) == (user, auth, charset)
    assert got.database == (database if caps & hs.CONNECT_WITH_DB else "")
    assert got.auth_plugin == (hs.NATIVE_PASSWORD if caps & hs.PLUGIN_AUTH else "")


PARSERS = (hs.parse_greeting, hs.parse_handshake_response, hs.parse_auth_switch,
           hs.parse_command)


@settings(max_examples=400)
@given(data=st.binary(max_size=300), which=st.integers(0, len(PARSERS) - 1))
def test_arbitrary_bytes_parse_or_raise_protocol_error(data, which):
    try:
        PARSERS[which](data)
    except mysql.ProtocolError:
        pass


@settings(max_examples=200)
@given(cut=st.integers(0, 200), caps=st.integers(0, 0xFFFFFFFF))
def test_every_truncation_of_a_response_is_refused_or_a_prefix(cut, caps):
    caps = (caps | hs.PROTOCOL_41) & ~hs.CONNECT_ATTRS
    full = hs.build_handshake_response(hs.HandshakeResponse(
        caps, hs.MAX_PACKET, 45, "alice", b"x" * 20, "example-db", hs.NATIVE_PASSWORD))
    try:
        got = hs.parse_handshake_response(full[:cut])
    except mysql.ProtocolError:
        return
    assert got.user == "alice"  # a parse of a prefix never invents a different user


def test_ssl_request_is_recognised_only_as_its_32_bytes():
    req = hs.build_ssl_request(hs.PROXY_CAPS)
    assert len(req) == 32 and hs.is_ssl_request(req)
    assert not hs.is_ssl_request(req + b"alice\0")
    assert not hs.is_ssl_request(bytes(32))  # CLIENT_SSL unset


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.asked = data, []

    async def readexactly(self, n: int) -> bytes:
        self.asked.append(n)
        if n > len(self.data):
            raise asyncio.IncompleteReadError(self.data, n)
        out, self.data = self.data[:n], self.data[n:]
        return out


def test_read_packet_refuses_an_oversized_length_before_reading_it():
    reader = _Reader(b"\xff\xff\xff\x01" + b"x" * 10)
    with pytest.raises(mysql.ProtocolError, match="exceeds"):
        asyncio.run(hs.read_packet(reader))
    assert reader.asked == [4]  # the header only


def test_read_packet_reads_one_packet():
    reader = _Reader(mysql.packet(b"hello", 3) + b"rest")
    assert asyncio.run(hs.read_packet(reader)) == (3, b"hello")
    assert reader.data == b"rest"


def test_commands_held_by_the_relay_parse():
    assert hs.parse_command(hs.init_db("other-db")) == (hs.COM_INIT_DB, b"other-db")
    with pytest.raises(mysql.ProtocolError):
        hs.parse_command(hs.init_db("a") + hs.init_db("b"))  # two packets, not one
    with pytest.raises(mysql.ProtocolError):
        hs.parse_command(mysql.packet(b"", 0))


def test_auth_switch_forms():
    assert hs.parse_auth_switch(b"\xfe") == hs.AuthSwitch("mysql_old_password", b"")
    assert hs.parse_auth_switch(b"\xfecaching_sha2_password\0abc\0") == hs.AuthSwitch(
        "caching_sha2_password", b"abc")


def test_a_real_server_greeting_parses():
    """A MariaDB 10.11 greeting captured on the wire (devkit server, no TLS configured;
    MariaDB: CLIENT_MYSQL unset, extended capabilities in the filler)."""
    raw = bytes.fromhex(
        "0a352e352e352d31302e31312e31392d4d6172696144422d302b64656231327531000400000043"
        "566476473b343100fef7080200ff81150000000000001d0000003a6d386d3e2b5c703f27446000"
        "6d7973716c5f6e61746976655f70617373776f726400")
    g = hs.parse_greeting(raw)
    assert g.server_version == "5.5.5-10.11.19-MariaDB-0+deb12u1" and g.connection_id == 4
    assert not g.capabilities & (hs.SSL | hs.LONG_PASSWORD)
    assert g.capabilities & hs.PROTOCOL_41 and g.capabilities & hs.PLUGIN_AUTH
    assert g.auth_plugin == hs.NATIVE_PASSWORD and len(g.auth_data) == 20


# -- the front end's connection phase, fed arbitrary client bytes ------------------------


class _Audit:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def emit(self, kind: str, **fields: object) -> None:
        self.events.append((kind, fields))


class _Auth:
    def __init__(self) -> None:
        self.audit = _Audit()


class _Stream:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks, self.written, self.closed = list(chunks), bytearray(), False

    async def read(self, max_bytes: int = 65536) -> bytes:
        await asyncio.sleep(0)
        return self.chunks.pop(0)[:max_bytes] if self.chunks else b""

    async def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def _packets(data: bytes) -> list[mysql.Packet]:
    out = []
    while (split := mysql.split_packet(data)) is not None:
        packet, data = split
        out.append(packet)
    assert data == b""
    return out


def _no_engines(auth: _Auth):  # noqa: ANN202
    """No MySQL database in this process, none through an agent (never asked: these
    clients show no identity)."""
    from mwiproxy.proxy.directory import EngineDirectory

    return EngineDirectory({}, auth, lambda: None, ("mysql",))  # type: ignore[arg-type,return-value]


def _serve(chunks: list[bytes]) -> tuple[_Stream, _Auth]:
    from mwiproxy.proxy.mysql import MySQLFrontend
    from mwiproxy.proxy.sessions import SessionRegistry

    auth, stream = _Auth(), _Stream(chunks)
    frontend = MySQLFrontend(auth, _no_engines(auth), SessionRegistry(),  # type: ignore[arg-type]
                             lambda: None, startup_timeout=5)  # type: ignore[arg-type,return-value]
    asyncio.run(asyncio.wait_for(frontend.serve(stream, None, "test"), 10))  # type: ignore[arg-type]
    return stream, auth


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(1, 64), max_size=8))
def test_arbitrary_client_bytes_end_in_at_most_one_err_packet(data, cuts):
    """Whatever an unauthenticated client sends: the greeting, then at most one ERR
    packet (never a session: no identity), and the connection is closed."""
    chunks, rest = [], data
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    stream, auth = _serve([c for c in chunks if c])
    packets = _packets(bytes(stream.written))
    assert packets[0].sequence == 0 and hs.parse_greeting(packets[0].payload)
    assert len(packets) <= 2 and stream.closed
    if len(packets) == 2:
        assert packets[1].payload[:1] == b"\xff"
    assert all(kind == "db.access.denied" for kind, _ in auth.audit.events)


def test_a_handshake_without_tls_in_non_tunnel_mode_is_refused_with_the_reason():
    hello = hs.build_handshake_response(hs.HandshakeResponse(
        hs.PROXY_CAPS, hs.MAX_PACKET, 45, "alice", b"", "example-db", hs.NATIVE_PASSWORD))
    stream, auth = _serve([mysql.packet(hello, 1)])
    greeting, refusal = _packets(bytes(stream.written))
    assert hs.parse_greeting(greeting.payload).capabilities & hs.SSL  # offered
    err = mysql.parse_err(refusal.payload)
    assert refusal.sequence == 2 and err.code == mysql.ER_ACCESS_DENIED
    assert "no client certificate was presented" in err.message
    assert [k for k, _ in auth.audit.events] == ["db.access.denied"]


def test_an_ssl_request_outside_the_proxys_tls_is_refused():
    stream, _ = _serve([mysql.packet(hs.build_ssl_request(hs.PROXY_CAPS), 1)])
    greeting, refusal = _packets(bytes(stream.written))
    err = mysql.parse_err(refusal.payload)
    assert refusal.sequence == 2 and "only inside the proxy's" in err.message


def test_a_silent_client_is_told_and_dropped_at_the_timeout():
    from mwiproxy.proxy.mysql import MySQLFrontend
    from mwiproxy.proxy.sessions import SessionRegistry

    class Silent(_Stream):
        async def read(self, max_bytes: int = 65536) -> bytes:
            await asyncio.sleep(3600)
            return b""

    stream, auth = Silent([]), _Auth()
    frontend = MySQLFrontend(auth, _no_engines(auth), SessionRegistry(),  # type: ignore[arg-type]
                             lambda: None, startup_timeout=0.2)  # type: ignore[arg-type,return-value]
    asyncio.run(asyncio.wait_for(frontend.serve(stream, None, "test"), 10))  # type: ignore[arg-type]
    greeting, farewell = _packets(bytes(stream.written))
    assert "no handshake within 0.2s" in mysql.parse_err(farewell.payload).message
    assert stream.closed
