"""A cluster process of its own on the topology's PostgreSQL (it has the topology's CAs,
so the database trusts it): SIGTERM drains — a short query finishes, a long one is cut
after `proxy.drain_timeout` — and every session ends with `db.session.end` in the
audit; SIGHUP changes the databases while a session stays open."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests._testbase.agent import AGENT_SERVICE, Agent, db_token
from tests._testbase.cluster import ClusterProcess
from tests._testbase.fixtures import GUIDE_ROLE
from tests._testbase.ports import refused
from tests.e2e.conftest import Topology, wait_for

pytestmark = pytest.mark.integration

YAML = """\
version: v1
cluster_name: mwiproxy.local
data_dir: {{data_dir}}
proxy:
  listen_addr: 127.0.0.1:{{port}}
  drain_timeout: {drain}
databases:
{databases}"""
DB = """\
  - name: {name}
    protocol: postgres
    uri: 127.0.0.1:{pg_port}
    static_labels: {labels}
"""


def databases(topo: Topology, *names: str, template: bool = False) -> str:
    """YAML for `names`; `template`: escaped for ClusterProcess's str.format."""
    labels = "{{env: dev}}" if template else "{env: dev}"
    return "".join(DB.format(name=n, pg_port=topo.pg.port, labels=labels) for n in names)


def twin(topo: Topology, root: Path, drain: str = "30s", names: tuple[str, ...] = (
        "example-server",)) -> Topology:
    """A second cluster with the topology's CAs, its own state and the guide's role."""
    data = root / "data"
    data.mkdir(parents=True)
    shutil.copytree(topo.cluster.data_dir / "ca", data / "ca")
    cluster = ClusterProcess(data, config=YAML.format(
        drain=drain, databases=databases(topo, *names, template=True))).start()
    (root / "role.yaml").write_text(GUIDE_ROLE)
    cluster.ctl("create", "-f", str(root / "role.yaml"))
    return Topology(root, cluster, topo.pg)


def active_sleeps(topo: Topology) -> int:
    return int(topo.pg.psql("select count(*) from pg_stat_activity where usename = 'alice' "
                            "and state = 'active' and query like '%pg_sleep%'"))


def psql_bg(t: Topology, dsn: str, sql: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["psql", dsn, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_drains_then_cuts_and_every_session_is_audited(topo: Topology,
                                                                tmp_path: Path):
    t = twin(topo, tmp_path, drain="4s")
    lp = t.local_proxy(t.bot_output("drainer"), tunnel=True)
    dsn = t.dsn(lp)
    long = psql_bg(t, dsn, "select pg_sleep(30)")
    short = psql_bg(t, dsn, "select 'finished' from pg_sleep(2)")
    try:
        assert wait_for(lambda: active_sleeps(topo) == 2, 20), "both queries running"
        assert t.cluster.proc is not None
        host, port = t.cluster.addr.rsplit(":", 1)
        t.cluster.proc.send_signal(signal.SIGTERM)
        assert wait_for(lambda: refused(int(port), host), 3), "no new connections"
        out, _ = short.communicate(timeout=30)
        assert short.returncode == 0 and out.strip() == "finished"  # ran to its end
        _, err = long.communicate(timeout=30)
        assert long.returncode != 0 and "shutting down" in err
        assert t.cluster.proc.wait(30) == 0
    finally:
        for p in (long, short):
            if p.poll() is None:
                p.kill()
        lp.stop()
    t.cluster.start()  # the audit as the restarted cluster serves it
    try:
        starts = [e for e in t.audit("db.session.start") if e.get("bot") == "drainer"]
        ends = {e["session_id"]: e for e in t.audit("db.session.end")
                if e.get("bot") == "drainer"}
        assert len(starts) == 2 and set(ends) == {e["session_id"] for e in starts}
        assert sorted(e["reason"] == "shutdown" for e in ends.values()) == [False, True]
    finally:
        t.cluster.stop()


def test_sighup_changes_the_databases_while_a_session_stays_open(topo: Topology,
                                                                 tmp_path: Path):
    t = twin(topo, tmp_path)
    assert t.cluster.config_path is not None and t.cluster.proc is not None
    try:
        lp = t.local_proxy(t.bot_output("reloader"), tunnel=True)
        open_session = psql_bg(t, t.dsn(lp), "select 'survived' from pg_sleep(3)")
        assert wait_for(lambda: active_sleeps(topo) == 1, 20)
        config = t.cluster.config_path.read_text()
        t.cluster.config_path.write_text(config + databases(topo, "other-server"))
        t.cluster.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "changed: databases" in t.cluster.log.read_text(), 10)
        assert "other-server" in t.cluster.ctl("db", "ls").stdout
        other = t.local_proxy(t.bot_output("reloader2", service="other-server"),
                              tunnel=True, service="other-server")
        res = t.psql(t.dsn(other), "select 1")
        assert res.returncode == 0 and res.stdout.strip() == "1", res.stderr
        out, err = open_session.communicate(timeout=30)
        assert out.strip() == "survived", err  # the session outlived the reload
        t.cluster.config_path.write_text(config.replace("example-server", "renamed-server"))
        t.cluster.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: t.cluster.log.read_text().count("changed: databases") == 2,
                        10)
        gone = t.psql(t.dsn(other), "select 1")
        assert gone.returncode != 0 and "other-server" in gone.stderr
        assert "renamed-server" in t.cluster.ctl("db", "ls").stdout
    finally:
        for p in t.proxies:
            p.stop()
        t.cluster.stop()


def test_agent_sighup_registers_its_new_database_list(topo: Topology):
    agent = Agent(topo, "reloading")
    agent.start(token=db_token(topo))
    try:
        assert wait_for(lambda: AGENT_SERVICE in topo.cluster.ctl("db", "ls").stdout, 10)
        extra = (f"  - {{name: agent-extra, protocol: postgres, uri: 127.0.0.1:{topo.pg.port},"
                 " static_labels: {env: dev}}\n")
        agent.config.write_text(agent.config.read_text() + extra)
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "agent-extra" in topo.cluster.ctl("db", "ls").stdout, 10)
        agent.config.write_text(agent.config.read_text() + "bogus: 1\n")
        agent.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: f"{agent.config}:" in agent.log.read_text(), 10)
        assert "not reloaded" in agent.log.read_text() and agent.proc.poll() is None
    finally:
        agent.stop()
    assert agent.proc.returncode == 0
