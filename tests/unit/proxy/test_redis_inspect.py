"""The Redis inspector's verdicts on the commands the relay holds: AUTH, HELLO … AUTH
and RESET may not switch the session's database user; each is audited with its
password masked; everything else passes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mwiproxy.identity.certs import Identity
from mwiproxy.proxy import redisinspect
from mwiproxy.proxy.redisinspect import judge
from mwiproxy.proxy.sessions import Session
from mwiproxy.wire import redis as resp


def _args(*words: str) -> list[bytes]:
    return [w.encode() for w in words]


@pytest.mark.parametrize(("words", "shown", "allowed"), [
    (("AUTH", "pw"), "AUTH ****", False),
    (("auth", "alice", "pw"), "AUTH alice ****", True),
    (("AUTH", "bob", "pw"), "AUTH bob ****", False),
    (("AUTH", "a", "b", "c"), "", True),  # Redis's syntax error: nothing switches
    (("HELLO", "3"), "", True),
    (("HELLO",), "", True),
    (("HELLO", "3", "AUTH", "alice", "pw", "SETNAME", "app"),
     "HELLO 3 AUTH alice **** SETNAME app", True),
    (("hello", "2", "auth", "bob", "pw"), "HELLO 2 AUTH bob ****", False),
    (("HELLO", "3", "AUTH", "alice", "pw", "AUTH", "bob", "pw"),
     "HELLO 3 AUTH alice **** AUTH bob ****", False),
    (("HELLO", "3", "AUTH", "bob"), "", True),  # no password: a syntax error
    (("RESET",), "RESET", False),
    (("GET", "AUTH"), "", True),
    ((), "", True),
])
def test_verdicts_for_alice(words, shown, allowed):
    got_shown, why = judge(_args(*words), "alice")
    assert got_shown == shown
    assert (why == "") == allowed
    assert "pw" not in got_shown


def test_default_may_reset_and_auth_with_a_password_only():
    assert judge(_args("RESET"), "default") == ("RESET", "")
    assert judge(_args("AUTH", "pw"), "default") == ("AUTH ****", "")
    assert judge(_args("AUTH", "alice", "pw"), "default")[1]


class _Audit:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, kind: str, **fields: Any) -> None:
        self.events.append((kind, fields))


def _decide(message: bytes) -> tuple[bytes | None, list[tuple[str, dict[str, Any]]]]:
    audit = _Audit()
    session = Session(Identity("bot-x", bot_name="x"), "svc", "alice", "", "remote")
    inspect = redisinspect.command_inspector(audit, session)  # type: ignore[arg-type]
    return asyncio.run(inspect.decide(message)), audit.events


def test_a_refused_auth_answers_err_and_is_audited_masked():
    verdict, events = _decide(resp.encode_command("AUTH", "bob", "hunter2"))
    assert verdict is not None and verdict.startswith(b'-ERR AUTH as "bob" is not allowed')
    assert verdict.endswith(b"\r\n") and verdict.count(b"\r\n") == 1
    [(kind, fields)] = events
    assert kind == redisinspect.REDIS_COMMAND
    assert fields["command"] == "AUTH bob ****" and fields["allowed"] is False
    assert len(fields["session"]) == 32 and int(fields["session"], 16) >= 0
    assert "hunter2" not in repr(events)


def test_inline_commands_are_parsed_with_redis_quoting():
    verdict, events = _decide(b'auth "b\\x6fb" \'x y\'\r\n')
    assert verdict is not None and b'"bob"' in verdict
    assert events[0][1]["command"] == "AUTH bob ****"
    assert _decide(b"GET k\n") == (None, [])
    assert _decide(b"AUTH alice x\n")[0] is None


def test_malformed_held_commands_end_the_session():
    verdict, _ = _decide(b'AUTH "bob x\r\n')
    assert verdict == b"-ERR Protocol error: unbalanced quotes in request\r\n"
    assert _decide(b"AUTH bob\0 x\r\n")[0] == redisinspect.VIOLATION
    assert _decide(b"*2\r\n$4\r\nAUTH\r\n")[0] == redisinspect.VIOLATION  # not whole


def test_split_inline_follows_sdssplitargs():
    assert resp.split_inline(b'set "a\\x41b\\n" \'it\\\'s\'') == [b"set", b"aAb\n", b"it's"]
    assert resp.split_inline(b'a"b c"d') is None  # a closing quote needs a space after
    assert resp.split_inline(b'a"b c" d') == [b"ab c", b"d"]
    assert resp.split_inline(b"  \t ") == []
