"""Query audit (issue 14) for Redis through the cluster proxy: every command redis-py and
redis-cli send is in a `db.session.query` event (one per drain of the relay's records:
`commands`, flattened here as mwictl sessions shows them), with its arguments per the role's policy
(hashed by default) and AUTH / HELLO AUTH passwords masked. Runs in whichever build the
cluster uses."""

from __future__ import annotations

import json
import uuid

import pytest

from mwiproxy.cli.mwictl_sessions import commands_of
from mwiproxy.wire import redis as resp
from tests.e2e.test_redis import (  # noqa: F401 (topo, tunnel: its fixtures)
    SECRET,
    _refused_then_closed,
    cli,
    client,
    topo,
    tunnel,
)
from tests.e2e.test_redis import wait_until as wait_for

pytestmark = pytest.mark.integration


def _commands(rig) -> list[dict[str, object]]:
    return [c for e in rig.audit("db.session.query") for c in commands_of(e)]


def _session_queries(rig, session: str) -> list[dict[str, object]]:
    return [e for e in _commands(rig) if e.get("session") == session]


def test_every_command_is_recorded_with_hashed_arguments(topo, tunnel):  # noqa: F811
    key = "k-" + uuid.uuid4().hex
    r = client(tunnel)
    r.set(key, "v1")
    assert r.get(key) == b"v1"
    r.delete(key)
    r.close()
    found: list[dict[str, object]] = []

    def recorded() -> bool:
        found[:] = [e for e in _commands(topo) if e.get("command") == "DEL"
                    and e.get("protocol") == "redis"]
        return bool(found)
    assert wait_for(recorded)
    session = str(found[-1]["session"])
    assert wait_for(lambda: {"SET", "GET", "DEL"} <= {
        e["command"] for e in _session_queries(topo, session)})
    sets = [e for e in _session_queries(topo, session) if e["command"] == "SET"]
    assert sets[0]["argc"] == 2 and sets[0]["status"] == "read"
    assert all(str(a).startswith("hmac-sha256:") for a in sets[0]["args"])
    assert key not in json.dumps(_session_queries(topo, session))


def test_auth_passwords_are_masked_in_query_events(topo, tunnel):  # noqa: F811
    _refused_then_closed(tunnel, resp.encode_command("AUTH", "bob", SECRET))
    _refused_then_closed(tunnel, resp.encode_command("HELLO", "3", "AUTH", "bob", SECRET))
    res = cli(tunnel, "PING")
    assert res.returncode == 0 and "PONG" in res.stdout, res.stderr
    assert wait_for(lambda: {"AUTH", "HELLO", "PING"} <= {
        e["command"] for e in _commands(topo) if e.get("protocol") == "redis"})
    auths = [e for e in _commands(topo) if e.get("command") == "AUTH"]
    assert auths and all(e["args"] == ["****", "****"] for e in auths)
    hellos = [e for e in _commands(topo) if e.get("command") == "HELLO"
              and e.get("argc") == 4]
    assert hellos and all(e["args"][2:] == ["****", "****"] for e in hellos)
    assert SECRET not in json.dumps(_commands(topo))
