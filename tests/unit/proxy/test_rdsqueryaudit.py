"""proxy/rdsqueryaudit.py: the Redis tap's records become one `db.session.query` per
command: arguments per the policy, password positions masked whatever the policy."""

from __future__ import annotations

import pytest

from mwiproxy._native import rdsaudit_py
from mwiproxy.proxy.queryaudit import QueryAuditPolicy
from mwiproxy.proxy.rdsqueryaudit import RedisQueryAudit, secret_positions
from tests.unit.native.test_rdsaudit_differential import command
from tests.unit.proxy.test_queryaudit import WHO, Sink


def _events(data: bytes, parameters: str = "plain") -> list[dict[str, object]]:
    sink = Sink()
    qa = RedisQueryAudit(sink, WHO, QueryAuditPolicy(True, parameters), key=b"k")
    tap = rdsaudit_py.Tap()
    tap.feed(0, data, 1)
    qa.on_records(tap.records)
    return sink.of("db.session.query")


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
