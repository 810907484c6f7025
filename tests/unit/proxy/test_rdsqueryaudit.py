"""proxy/rdsqueryaudit.py: the Redis tap's records become `db.session.query` events, one
per drain of commands (flattened here, one dict per command, as mwictl sessions shows
them): arguments per the policy, password positions masked whatever the policy."""

from __future__ import annotations

import json

import pytest

from mwiproxy._native import rdsaudit_py
from mwiproxy.auth.audit import AuditLog
from mwiproxy.auth.storage.base import EncodedFields
from mwiproxy.auth.storage.chain import fields_text
from mwiproxy.auth.storage.sqlite import SQLiteStorage
from mwiproxy.cli.mwictl_sessions import commands_of
from mwiproxy.proxy.queryaudit import QueryAuditPolicy
from mwiproxy.proxy.rdsqueryaudit import MAX_COMMANDS, MAX_TEXT, RedisQueryAudit, secret_positions
from tests.unit.native.test_rdsaudit_differential import command
from tests.unit.proxy.test_queryaudit import WHO, Sink


def _records(data: bytes) -> list[bytes]:
    tap = rdsaudit_py.Tap()
    tap.feed(0, data, 1)
    return tap.records


def _events(data: bytes, parameters: str = "plain") -> list[dict[str, object]]:
    """One dict per command (the batch events flattened as mwictl sessions shows them)."""
    sink = Sink()
    qa = RedisQueryAudit(sink, WHO, QueryAuditPolicy(True, parameters), key=b"k")
    qa.on_records(_records(data))
    return [c for e in sink.of("db.session.query") for c in commands_of(e)]


@pytest.mark.parametrize(("args", "secret"), [
    ([b"auth", b"pw"], {0}),
    ([b"AUTH", b"bob", b"pw"], {0, 1}),
    ([b"HELLO", b"3", b"auth", b"bob", b"pw", b"SETNAME", b"x"], {2, 3}),
    ([b"MIGRATE", b"h", b"1", b"", b"0", b"5", b"AUTH2", b"u", b"p", b"KEYS", b"a"], {6, 7}),
    ([b"ACL", b"SETUSER", b"bob", b"on", b">pw", b"~*"], {3}),
    ([b"CONFIG", b"SET", b"requirepass", b"pw"], {2}),
    ([b"SET", b"auth", b"x"], set()),
])
def test_secret_positions(args, secret):
    assert secret_positions(args[0], args[1:]) == secret


@pytest.mark.parametrize("parameters", ["plain", "hash", "omit"])
def test_passwords_are_masked_under_every_policy(parameters):
    [auth, sets] = _events(command(b"AUTH", b"alice", b"pw") + command(b"SET", b"k", b"v"),
                           parameters)
    assert auth["command"] == "AUTH" and auth["argc"] == 2 and auth["status"] == "read"
    if parameters == "omit":
        assert "args" not in auth and "args" not in sets
        return
    assert auth["args"] == ["****", "****"]
    want = ["k", "v"] if parameters == "plain" else None
    assert sets["args"] == want or all(str(a).startswith("hmac-sha256:") for a in sets["args"])


def test_inline_commands_and_cut_arguments():
    inline, long = _events(b"ping\r\n" + command(b"SET", b"k", b"x" * 300))
    assert inline == {**WHO, "command": "PING", "query": "PING", "argc": 0, "status": "read",
                      "inline": True}
    assert long["args_truncated"] is True and len(long["args"][1]) == 256


def test_a_drain_of_commands_is_stored_as_few_events_in_order(tmp_path):
    """One event per MAX_COMMANDS commands of a drain (the stored text is the canonical
    encoding of its fields: the chain verifies), every command kept in order, found by
    the session; what it holds is what one event per command held."""
    storage = SQLiteStorage(str(tmp_path / "state.db"))
    log = AuditLog(storage)
    qa = RedisQueryAudit(log.emit, WHO, QueryAuditPolicy(True, "hash"), key=b"k",
                         emit_many=log.emit_many)
    n = 2 * MAX_COMMANDS + 50
    data = b"".join(command(b"SET", b"key:%d" % i, b"v") for i in range(n))
    qa.on_records(_records(data))
    qa.on_records(_records(command(b"AUTH", b"alice", b"pw")))
    assert log.flush(60)
    stored = log.query(session=WHO["session"], types=["db.session.query"])
    assert [e.fields["count"] for e in stored] == [MAX_COMMANDS, MAX_COMMANDS, 50, 1]
    flat = [c for e in stored for c in commands_of(e.fields)]
    assert qa.events == n + 1 == len(flat)
    assert flat == _events(data, "hash") + [{**WHO, "command": "AUTH", "query": "AUTH",
                                              "argc": 2, "status": "read",
                                              "args": ["****", "****"]}]
    assert log.verify().intact
    log.close()
    storage.close()


def test_large_commands_start_a_new_event_past_the_text_bound():
    sink = Sink()
    qa = RedisQueryAudit(sink, WHO, QueryAuditPolicy(True, "plain"), key=b"k")
    big = b"x" * 256  # args are kept to 256 bytes each: 16 of them per command
    data = b"".join(command(b"MSET", *([big] * 16)) for _ in range(40))
    qa.on_records(_records(data))
    events = sink.of("db.session.query")
    assert len(events) > 1 and sum(e["count"] for e in events) == 40
    assert all(len(json.dumps(e["commands"])) <= MAX_TEXT + 8 * 1024 for e in events)


def test_session_fields_may_not_collide_with_the_batch_fields():
    with pytest.raises(ValueError, match="commands"):
        RedisQueryAudit(Sink(), {**WHO, "commands": 1}, QueryAuditPolicy(True, "hash"))


@pytest.mark.parametrize("parameters", ["plain", "hash", "omit"])
def test_an_events_text_is_the_canonical_encoding_of_its_fields(parameters):
    """The text spliced from the commands' texts is what fields_text gives for the
    fields it holds (so nothing that re-encodes an event changes its bytes)."""
    got: list[EncodedFields] = []
    qa = RedisQueryAudit(Sink(), {**WHO, "session_id": 7, "remote": "ré\n\"x"},
                         QueryAuditPolicy(True, parameters), key=b"k",
                         emit_many=lambda type_, many: got.extend(many))
    qa.on_records(_records(b"ping\r\n" + command(b"SET", "clé".encode(), b"\xff\x00")
                           + command(b"AUTH", b"u", b"p")))
    (event,) = got
    assert event.session == WHO["session"]
    assert fields_text(event.as_dict()) == event.text
    assert event.as_dict()["count"] == 3 and event.as_dict()["session_id"] == 7
