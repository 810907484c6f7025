"""A database agent drains on SIGTERM like the cluster: it stops taking link connections
and unregisters at once, open sessions get `db_service.drain_timeout` to finish, what is
left is cut (the cluster audits its db.session.end), and the agent exits 0."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from tests._testbase.agent import AGENT_SERVICE, Agent, db_token
from tests._testbase.ports import refused
from tests.e2e.conftest import Topology, wait_for

pytestmark = pytest.mark.integration

LONG = "select pg_sleep(29.5)"  # a length no other test uses: its backend is found by it


def served(topo: Topology) -> bool:
    """Some agent is registered for the agent's database."""
    listing = json.loads(topo.cluster.ctl("db", "ls", "--format", "json").stdout)
    return any(d["name"] == AGENT_SERVICE and d.get("agents") for d in listing)


def running(topo: Topology, query: str) -> int:
    return int(topo.pg.psql("select count(*) from pg_stat_activity where usename = 'alice' "
                            f"and state = 'active' and query = '{query}'"))


def psql_bg(dsn: str, sql: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["psql", dsn, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def draining_agent(topo: Topology, name: str, drain: str) -> Agent:
    agent = Agent(topo, name, service_extra=f"  drain_timeout: {drain}\n")
    agent.start(token=db_token(topo))
    assert wait_for(lambda: served(topo), 30), "the agent registered its database"
    return agent


def test_sigterm_lets_an_open_session_finish_and_serves_no_new_one(topo: Topology):
    agent = draining_agent(topo, "drain-finish", "10s")
    lp = topo.local_proxy(topo.bot_output("agent-drainer", service=AGENT_SERVICE),
                          tunnel=True, service=AGENT_SERVICE)
    query = "select 1 + 1 from pg_sleep(3)"
    short = psql_bg(topo.dsn(lp), query)
    try:
        assert wait_for(lambda: running(topo, query) == 1, 30), "the query is running"
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: refused(agent.port), 30), "no new link connections"
        assert wait_for(lambda: not served(topo), 30), "unregistered while draining"
        late = topo.psql(topo.dsn(lp), "select 40 + 2")
        assert late.returncode != 0 and "42" not in late.stdout, late
        out, err = short.communicate(timeout=60)
        assert short.returncode == 0 and out.strip() == "2", err  # ran to its end
        assert agent.proc.wait(60) == 0
    finally:
        if short.poll() is None:
            short.kill()
        agent.stop(signal.SIGKILL)
        lp.stop()
    log = agent.log.read_text()
    assert "drained: 1 link session(s) finished, 0 cut" in log, log


def test_sigterm_cuts_what_outlives_the_drain_timeout(topo: Topology):
    agent = draining_agent(topo, "drain-cut", "1s")
    lp = topo.local_proxy(topo.bot_output("agent-cut", service=AGENT_SERVICE),
                          tunnel=True, service=AGENT_SERVICE)
    long = psql_bg(topo.dsn(lp), LONG)
    try:
        assert wait_for(lambda: running(topo, LONG) == 1, 30), "the query is running"
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGTERM)
        # cut after ~1 s: well before the query's own 29.5 s (TimeoutExpired otherwise)
        _, err = long.communicate(timeout=20)
        assert long.returncode != 0 and "the database agent is shutting down" in err, err
        assert agent.proc.wait(60) == 0
    finally:
        if long.poll() is None:
            long.kill()
        agent.stop(signal.SIGKILL)
        lp.stop()
        # the database sleeps on until it next writes to the cut connection: end it
        topo.pg.psql("select pg_terminate_backend(pid) from pg_stat_activity where "
                     f"usename = 'alice' and query = '{LONG}'")
    assert "drained: 0 link session(s) finished, 1 cut" in agent.log.read_text()

    def ended() -> bool:
        starts = {e["session_id"] for e in topo.audit("db.session.start")
                  if e.get("bot") == "agent-cut"}
        ends = {e["session_id"] for e in topo.audit("db.session.end")
                if e.get("bot") == "agent-cut"}
        return len(starts) == 1 and starts == ends

    assert wait_for(ended, 30), "the cluster audited the cut session's end"
