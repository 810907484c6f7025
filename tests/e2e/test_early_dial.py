"""The cluster proxy dials PostgreSQL (TCP + SSLRequest) while the access policy is
checked. A refused connection must leave no authenticated connection on the database:
PostgreSQL's own log shows the TCP connection arrive and end in the TLS negotiation,
never a login. Both modes (the non-tunnel identity comes from the inner TLS)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import Topology, wait_for

pytestmark = pytest.mark.integration

WIDE = 60.0
RECEIVED = re.compile(r"\[(\d+)\] LOG:  connection received: host=127\.0\.0\.1")


@pytest.fixture(scope="module")
def logged_connections(topo: Topology) -> None:
    topo.pg.psql("ALTER SYSTEM SET log_connections = on")
    topo.pg.psql("SELECT pg_reload_conf()")
    assert wait_for(lambda: topo.pg.psql("SHOW log_connections") == "on", timeout=WIDE)


def _backend_lines(log: str, pid: str) -> list[str]:
    return [line for line in log.splitlines() if f"[{pid}]" in line]


@pytest.mark.parametrize("tunnel_mode", [True, False], ids=["tunnel", "non-tunnel"])
def test_a_refused_user_causes_no_login_on_the_database(topo, logged_connections,
                                                        tunnel_mode):
    bot = f"refused-early-{'t' if tunnel_mode else 'n'}"
    out = topo.bot_output(bot)
    lp = topo.local_proxy(out, tunnel=tunnel_mode)
    dsn = topo.dsn(lp, None if tunnel_mode else out)
    assert topo.psql(dsn, "select 1").stdout.strip() == "1"  # allowed before the lock
    topo.cluster.ctl("lock", f"--bot={bot}", "--message", "early dial probe")
    seen = len(topo.pg.log_text())

    res = topo.psql(dsn, "select 1")
    assert f"access to db denied: bot '{bot}' is locked: early dial probe" in res.stderr

    # the early dial reached PostgreSQL (so this test does exercise the refusal after
    # it), and that backend ended without a login
    assert wait_for(lambda: RECEIVED.search(topo.pg.log_text()[seen:]), timeout=WIDE)
    pids = RECEIVED.findall(topo.pg.log_text()[seen:])
    assert len(pids) == 1, topo.pg.log_text()[seen:]
    assert wait_for(lambda: not Path(f"/proc/{pids[0]}").exists(), timeout=WIDE)
    lines = _backend_lines(topo.pg.log_text()[seen:], pids[0])
    assert not [line for line in lines if "authenticated" in line or "authorized" in line], \
        lines
    denied = [e for e in topo.audit("db.access.denied") if e["user"] == f"bot-{bot}"]
    assert denied and "locked" in str(denied[-1]["reason"])
