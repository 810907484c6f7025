"""Redis query events straight from tap records: _auditenc.redis_query_texts
(csrc/mwi_rdsauditenc.c) against its twin rdsauditenc_py, and the twin against the events
one per command that RedisQueryAudit emitted before it batched them (the rules written
out again here, _old_info) as canonical_fields writes them. Records
come from the real tap (rdsaudit_py.Tap) and from hand-built ones (cut, NULL, odd)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy._native import auditenc_py, rdsaudit_py, rdsauditenc_py
from mwiproxy._native.pgaudit_py import HDR, NULL, PARAMS_OMITTED, decode
from mwiproxy._native.rdsauditenc_py import MASK
from mwiproxy.wire.sqlredact import _DIGEST_HEX, DIGEST_PREFIX, param_digests
from tests.unit.native.test_rdsaudit_differential import command

try:
    from mwiproxy._native import _auditenc
except ImportError:
    _auditenc = None  # type: ignore[assignment]

native = pytest.mark.skipif(_auditenc is None, reason="extension not built")
MODES = st.sampled_from(["omit", "hash", "plain"])
OWN = ["argc", "args", "args_truncated", "command", "inline", "query", "status"]

NAMES = st.sampled_from([b"AUTH", b"auth", b"HELLO", b"hello", b"ACL", b"acl", b"MIGRATE",
                         b"migrate", b"CONFIG", b"config", b"SET", b"get", b"PING", b"",
                         "ß".encode(), "état".encode(), b"\xff\xfe", b"a\"b\\c\x01"]) \
    | st.binary(max_size=70) | st.text(max_size=10).map(str.encode) \
    | st.text(st.characters(max_codepoint=0x7f), max_size=70).map(str.encode)
WORDS = st.sampled_from([b"SETUSER", b"setuser", b"AUTH", b"auth", b"AUTH2", b"auth2",
                         b"REQUIREPASS", b"masterauth", b">pw", b"<pw", b"#ab", b"!cd", b"~*",
                         b"", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xe2\x82"])
ARGS = st.lists(WORDS | st.binary(max_size=300)
                | st.text(max_size=90).map(lambda s: s.encode("utf-8", "surrogatepass")),
                max_size=20)
# commands with passwords in them, and near misses
SECRET = st.tuples(st.sampled_from([b"AUTH", b"Auth", b"HELLO", b"ACL", b"acl", b"MIGRATE",
                                    b"CONFIG", b"config", b"SET"]),
                   st.lists(WORDS, max_size=8),
                   st.sampled_from([[], [b"SETUSER"], [b"setuser", b"bob"], [b"SET"]])
                   ).map(lambda c: (c[0], c[2] + c[1]))
COMMANDS = st.lists(SECRET | st.tuples(NAMES, ARGS), max_size=5)
INLINE_NAMES = st.text(st.characters(blacklist_characters=" \t\r\n*", min_codepoint=1),
                       min_size=1, max_size=80).map(lambda s: s.encode("utf-8", "replace"))
WHO_KEYS = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1,
                   max_size=10).filter(lambda k: k not in OWN)
WHO_VALUES = st.text(max_size=20) | st.integers() | st.sampled_from(["", "ålice", "\U0001f600", "\ud800",
                                                     "a\"\\\n\x00"])
WHO = st.lists(st.tuples(WHO_KEYS, WHO_VALUES), max_size=6)
KEYS = st.binary(min_size=1, max_size=80)  # an empty key is the process key's to the old path


def _tap_records(commands: list[tuple[bytes, list[bytes]]], inline: list[bytes]) -> list[bytes]:
    tap = rdsaudit_py.Tap()
    for name, args in commands:
        tap.feed(0, command(name, *args), 1)
    for name in inline:
        tap.feed(0, b"  " + name + b" rest\r\n", 1)
    return tap.records


def _record(flags: int, aux: int, fields: list[tuple[int, bytes | None]], kind: bytes = b"K"
            ) -> bytes:
    """A hand-built record: (full length, stored bytes or None: NULL) per field."""
    out = bytearray(HDR)
    out[0], out[1] = kind[0], flags
    struct.pack_into("<HII", out, 2, len(fields), 7, aux)
    for full, data in fields:
        out += struct.pack("<II", NULL, 0) if data is None else \
            struct.pack("<II", full, len(data)) + data
    return bytes(out)


CUT = st.builds(
    lambda flags, aux, name, args: _record(flags, aux, [(len(name), name)] + args),
    st.sampled_from([0, 1, PARAMS_OMITTED, 1 | PARAMS_OMITTED, rdsaudit_py.INLINE]),
    st.integers(0, 2**32 - 1), st.sampled_from([b"SET", b"get", b"AUTH", b"hello"]) | NAMES,
    st.lists(st.tuples(st.sampled_from([0, 0, 1]) | st.integers(0, 2**32),
                       st.none() | st.binary(max_size=40)
                       | st.binary(max_size=40).map(lambda b: b.hex().encode()))
             .map(lambda f: (min(len(f[1] or b"") + f[0], NULL - 1), f[1])), max_size=18))
OTHER = st.builds(lambda n: _record(0, 0, [(n, b"x")], kind=b"R"), st.integers(0, 9))


_AFTER = {b"HELLO": {b"AUTH": 2}, b"MIGRATE": {b"AUTH": 1, b"AUTH2": 2},
          b"CONFIG": {b"REQUIREPASS": 1, b"MASTERAUTH": 1}}


def _old_secret(name: bytes, args: list[bytes]) -> set[int]:
    name = name.upper()
    if name == b"AUTH":
        return set(range(len(args)))
    if name == b"ACL" and args and args[0].upper() == b"SETUSER":
        return {i for i, a in enumerate(args) if i >= 2 and a[:1] in (b">", b"<", b"#", b"!")}
    out: set[int] = set()
    for i, a in enumerate(args):
        n = _AFTER.get(name, {}).get(a.upper(), 0)
        out.update(range(i + 1, i + 1 + n))
    return out


def _old_info(raw: bytes, mode: str, key: bytes) -> dict[str, Any]:
    """One command's event fields as RedisQueryAudit._command built them (session 10)."""
    rec = decode(raw)
    name = rec.fields[0][1] or b""
    shown = name.decode("utf-8", "replace").upper()
    info: dict[str, Any] = {"command": shown, "query": shown, "argc": rec.aux,
                            "status": "read"}
    if rec.flags & rdsaudit_py.INLINE:
        return {**info, "inline": True}
    values = [v or b"" for _, v in rec.fields[1:]]
    secret = _old_secret(name, values)
    if mode != "omit":
        args: list[str | None] = (param_digests(list(values), key) if mode == "hash"
                                  else [v.decode("utf-8", "replace") for v in values])
        info["args"] = [MASK if i in secret else v for i, v in enumerate(args)]
        cut = any(full > len(v or b"") for full, v in rec.fields[1:])
        if cut or rec.flags & PARAMS_OMITTED:
            info["args_truncated"] = True
    return info


def _old_texts(records: list[bytes], mode: str, key: bytes, who: list[tuple[str, str]]
               ) -> list[str | None]:
    """The events one per command, as canonical_fields writes them."""
    return [auditenc_py.canonical_fields({**dict(who), **_old_info(r, mode, key)})
            for r in records if r[:1] == b"K"]


def _texts(impl: Any, records: list[bytes], mode: str, key: bytes, who: list[tuple[str, str]],
           prefix: str = DIGEST_PREFIX, nhex: int = _DIGEST_HEX) -> list[str | None]:
    return impl.redis_query_texts(records, mode, key, prefix, nhex, who)


def _declined_ok(record: bytes, mode: str) -> bool:
    """Whether the native build may leave this (tap-made) record to the caller."""
    rec = decode(record)
    name = rec.fields[0][1] or b""
    if not name.isascii():
        return True
    if mode != "plain" or rec.flags & rdsaudit_py.INLINE:
        return False
    values = [v or b"" for _, v in rec.fields[1:]]
    secret = rdsauditenc_py.secret_positions(name, values)
    for i, v in enumerate(values):
        try:
            v.decode()
        except UnicodeDecodeError:
            if i not in secret:
                return True
    return False


def _check_native(records: list[bytes], mode: str, key: bytes, who: list[tuple[str, str]],
                  pure: list[str | None], **kw: Any) -> None:
    if _auditenc is None:
        return
    got = _texts(_auditenc, records, mode, key, who, **kw)
    commands = [r for r in records if r[:1] == b"K"]
    assert len(got) == len(pure) == len(commands)
    for text, want, rec in zip(got, pure, commands, strict=True):
        if text is None:
            assert _declined_ok(rec, mode), rec
        else:
            assert text == want


@settings(max_examples=400, deadline=None)
@given(COMMANDS, st.lists(INLINE_NAMES, max_size=2),
       st.lists(CUT | OTHER, max_size=4), MODES, KEYS, WHO)
def test_tap_records(commands: list[tuple[bytes, list[bytes]]], inline: list[bytes],
                     extra: list[bytes], mode: str, key: bytes,
                     who: list[tuple[str, str]]) -> None:
    records = _tap_records(commands, inline) + extra
    pure = _texts(rdsauditenc_py, records, mode, key, who)
    assert pure == _old_texts(records, mode, key, who)
    assert None not in pure
    _check_native(records, mode, key, who, pure)


@settings(max_examples=300, deadline=None)
@given(st.lists(CUT, min_size=1, max_size=3), MODES, KEYS, WHO)
def test_cut_records(records: list[bytes], mode: str, key: bytes,
                     who: list[tuple[str, str]]) -> None:
    """Hand-built records: arguments cut by a byte or many, NULL ones, omitted ones."""
    pure = _texts(rdsauditenc_py, records, mode, key, who)
    assert pure == _old_texts(records, mode, key, who)
    _check_native(records, mode, key, who, pure)


@native
@pytest.mark.native_only
@settings(max_examples=300, deadline=None)
@given(COMMANDS, MODES, st.binary(max_size=40),
       st.lists(st.tuples(st.sampled_from(OWN) | WHO_KEYS, WHO_VALUES | st.just("x")),
                max_size=8),
       st.text(max_size=12), st.integers(-70, 70))
def test_odd_sessions(commands: list[tuple[bytes, list[bytes]]], mode: str, key: bytes,
                      who: list[tuple[str, str]], prefix: str, nhex: int) -> None:
    """Fixed fields named as the event's own (the event's win), repeated ones (the last
    wins), any digest prefix and length: native == twin."""
    records = _tap_records(commands, [])
    pure = _texts(rdsauditenc_py, records, mode, key, who, prefix, nhex)
    _check_native(records, mode, key, who, pure, prefix=prefix, nhex=nhex)


@native
@pytest.mark.native_only
@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=HDR, max_size=HDR + 80), st.integers(0, 70))
def test_garbled_records(body: bytes, nfields: int) -> None:
    """A record not as the tap makes them: declined (None) or the twin's text, no crash."""
    rec = b"K" + body[1:2] + struct.pack("<H", nfields) + body[4:]
    try:
        want = _texts(rdsauditenc_py, [rec], "plain", b"k", [])
    except (IndexError, struct.error):
        want = [None]
    got = _texts(_auditenc, [rec], "plain", b"k", [])
    assert got == [None] or got == want


@native
@pytest.mark.native_only
def test_odd_arguments() -> None:
    """Short records, records of other kinds, not-bytes records, odd fixed values."""
    assert _texts(_auditenc, [b"", b"K", b"R" * 50], "hash", b"k", []) == [None]
    recs = _tap_records([(b"SET", [b"k", b"v"])], [])
    arr: list[Any] = [bytearray(recs[0])]
    assert _texts(_auditenc, arr, "plain", b"k", []) == _texts(rdsauditenc_py, arr, "plain",
                                                              b"k", [])
    odd: list[Any] = [("n", 1), ("l", [1, "x"]), ("f", 0.5)]
    assert _texts(_auditenc, recs, "plain", b"k", odd) == \
        _texts(rdsauditenc_py, recs, "plain", b"k", odd)
    for not_plain in ([("b", b"x")], [(1, "x")]):  # the twin's answer: not plain
        assert _texts(_auditenc, recs, "plain", b"k", not_plain) == [None]


@pytest.mark.parametrize("impl", [
    pytest.param(rdsauditenc_py, id="py"),
    pytest.param(_auditenc, id="native", marks=[native, pytest.mark.native_only])])
def test_known_event(impl: Any) -> None:
    records = _tap_records([(b"auth", [b"alice", b"pw"]), (b"set", ["é".encode(), b"\x01"])],
                           [b"ping"])
    assert _texts(impl, records, "plain", b"k", [("user", "ålice"), ("session", "s")]) == [
        '{"argc":2,"args":["****","****"],"command":"AUTH","query":"AUTH","session":"s",'
        '"status":"read","user":"\\u00e5lice"}',
        '{"argc":2,"args":["\\u00e9","\\u0001"],"command":"SET","query":"SET","session":"s",'
        '"status":"read","user":"\\u00e5lice"}',
        '{"argc":0,"command":"PING","inline":true,"query":"PING","session":"s",'
        '"status":"read","user":"\\u00e5lice"}']


@native
@pytest.mark.native_only
@pytest.mark.parametrize("argc", [0, 1, 9, 10, 11, 99, 100, 999, 1000, 12345])
def test_argc_of_every_width(argc: int) -> None:
    """argc is written without printf (csrc put_uint): every width, as the twin writes it."""
    records = _tap_records([(b"MSET", [b"k%d" % i for i in range(argc)])], [])
    for mode in ("omit", "hash", "plain"):
        got = _texts(_auditenc, records, mode, b"k", [])
        assert got == _texts(rdsauditenc_py, records, mode, b"k", [])
        assert got[0] is not None and got[0].startswith(f'{{"argc":{argc},')
