"""CA rotation end to end: a real PostgreSQL, the cluster, `mwibot start` renewing every
second into a database output, and local proxies in tunnel and certificate mode reading
that output. Each CA is rotated while two sessions (one per mode) stay open; after each
phase new connections must work in both modes, the open sessions must still answer, and
the bot's bundles must hold both CAs during the grace period and the new one alone after.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from cryptography import x509

from mwiproxy.auth.client import AuthClient, fetch_cas_pinned
from mwiproxy.identity.authorities import spki_pin
from mwiproxy.identity.identityfile import read_identity_file
from mwiproxy.identity.pem import certificates
from tests._testbase import postgres
from tests._testbase.agent import AGENT_SERVICE, Agent, db_token
from tests.e2e.conftest import LocalProxyProcess, Topology, start_topology
from tests.integration.bot.botkit import BotProcess, wait_until

pytestmark = pytest.mark.integration

WALK = ["init", "update_clients", "update_servers", "standby"]
BUNDLE = {"host": "teleport-host-ca.crt", "user": "teleport-user-ca.crt"}
SELECT = "select current_user, 6 * 7"
IDENTITY_RENEWED = "renewed the bot identity"


class RotatingTopology(Topology):
    @property
    def host_ca(self) -> bytes:  # the CA files change names as they rotate
        return fetch_cas_pinned(self.cluster.addr, [self.ca_pin])["host"].encode()


@dataclass
class Rig:
    topo: Topology
    bot: BotProcess
    out: Path
    tunnel: LocalProxyProcess
    certmode: LocalProxyProcess
    sessions: list[psycopg.Connection[Any]]

    def ctl(self, *args: str) -> str:
        return self.topo.cluster.ctl(*args).stdout

    def admin(self, method: str) -> Any:
        ident = read_identity_file(str(self.topo.cluster.data_dir / "admin" / "identity"))
        with AuthClient.from_identity(self.topo.cluster.addr, ident) as c:
            return c.call(method)

    def pins(self, name: str) -> list[str]:
        data = (self.out / name).read_bytes()
        return sorted(spki_pin(x509.load_pem_x509_certificate(p)) for p in certificates(data))

    def bot_follows(self, kind: str) -> None:
        """The bot's output matches the cluster now: the CA bundle names every trusted CA
        of `kind`, and the client certificate comes from the signing user CA."""
        status = self.admin("rotation_status")[kind]
        # The outputs and the bot's own identity renew on their own timers: an output can
        # follow the phase while the identity the bot trusts the cluster with does not
        # yet. Moving on to update_servers then strands the bot (CI saw it: a new server
        # certificate it could not verify). So also wait for two identity renewals after
        # the phase change (one that began before it does not count).
        renewed = self.bot.log_text().count(IDENTITY_RENEWED) + 2

        def caught_up() -> bool:
            if self.bot.log_text().count(IDENTITY_RENEWED) < renewed:
                return False
            try:
                if kind in BUNDLE and self.pins(BUNDLE[kind]) != sorted(status["trusted"]):
                    return False
                return kind != "user" or self._tlscert_from(status["active"])
            except (OSError, ValueError):  # mid-switch: try again
                return False
        wait_until(caught_up, timeout=30, what=f"the bot's output to follow the {kind} CA "
                   f"({status['phase']})")

    def _tlscert_from(self, pin: str) -> bool:
        cert = x509.load_pem_x509_certificate((self.out / "tlscert").read_bytes())
        cas = self.admin("get_cas")["user"]
        for pem in certificates(cas.encode()):
            ca = x509.load_pem_x509_certificate(pem)
            if spki_pin(ca) == pin:
                try:
                    cert.verify_directly_issued_by(ca)
                    return True
                except Exception:
                    return False
        return False

    def all_connections_work(self, when: str) -> None:
        for lp, out in ((self.tunnel, None), (self.certmode, self.out)):
            res = self.topo.psql(self.topo.dsn(lp, out), SELECT)
            if out is not None and "key values mismatch" in res.stderr:
                # libpq opens tlscert and key one after the other: a renewal (every 2 s
                # here) may switch the bundle between the two opens. Any client reading two
                # files by path can see that; the next connect reads one version.
                res = self.topo.psql(self.topo.dsn(lp, out), SELECT)
            assert res.stdout.strip() == "alice|42", f"{when}: {res.stderr}"
        for conn in self.sessions:  # opened before the first rotation
            assert conn.execute(SELECT).fetchone() == ("alice", 42), when

    def reload_database_certs(self) -> None:
        """What an operator does for the db_client CA: re-sign the database's server
        certificate (server.cas now names the trusted client CAs) and reload."""
        out = self.topo.root / "server-rotated"
        self.ctl("auth", "sign", "--format=db", "--host=localhost,127.0.0.1", f"--out={out}",
                 "--ttl=24h", "--overwrite")
        pg = self.topo.pg
        for ext in ("crt", "key", "cas"):
            shutil.copy(f"{out}.{ext}", pg.data / f"server.{ext}")
            os.chmod(pg.data / f"server.{ext}", 0o600)
            pg._chown(pg.data / f"server.{ext}")
        pg.psql("select pg_reload_conf()")


def _bot_config(topo: Topology, token: str, pin: str, out: Path) -> Path:
    doc = {"version": "v2", "proxy_server": topo.cluster.addr,
           "onboarding": {"join_method": "token", "token": token, "ca_pins": [pin]},
           "storage": {"type": "directory", "path": str(topo.root / "bot-storage")},
           # sessions are cut when their certificate expires: give them a long one, and
           # renew every second so each phase reaches the bot at once
           "credential_ttl": "10m", "renewal_interval": "1s",
           "services": [{"type": "database", "name": "out", "destination": str(out),
                         "service": "example-server", "database": "example-db",
                         "username": "alice"}]}
    path = topo.root / "tbot.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if not postgres.available():
        pytest.skip("PostgreSQL 15 not installed")
    root = tmp_path_factory.mktemp("rotation")
    with start_topology(root, kind=RotatingTopology) as topo:
        bot: BotProcess | None = None
        sessions: list[psycopg.Connection[Any]] = []
        try:
            out = root / "out"
            bot = BotProcess(_bot_config(topo, topo.add_bot("example"), topo.ca_pin, out)
                             ).start()
            wait_until(lambda: (out / "tlscert").exists(), timeout=30, what="the bot's output")
            tunnel = topo.local_proxy(out, tunnel=True)
            certmode = topo.local_proxy(out, tunnel=False)
            sessions += [psycopg.connect(topo.dsn(tunnel)),
                         psycopg.connect(topo.dsn(certmode, out))]
            yield Rig(topo, bot, out, tunnel, certmode, sessions)
        finally:
            for conn in sessions:
                conn.close()
            if bot is not None:
                bot.stop()


def _walk(rig: Rig, kind: str, after: Callable[[str], None] = lambda _p: None) -> None:
    for phase in WALK:
        said = rig.ctl("auth", "rotate", f"--type={kind}", "--manual", f"--phase={phase}")
        assert f"The {kind} CA is now in phase {phase}." in said
        after(phase)
        rig.bot_follows(kind)
        rig.all_connections_work(f"{kind} CA, {phase}")


def _phases_audited(rig: Rig, kind: str) -> list[str]:
    return [e["phase"] for e in rig.topo.audit("ca.rotate.phase") if e["ca_type"] == kind]


def test_host_ca_rotation(rig):
    before = rig.pins(BUNDLE["host"])
    seen: dict[str, list[str]] = {}
    _walk(rig, "host", lambda phase: seen.setdefault(phase, []))
    after = rig.pins(BUNDLE["host"])
    assert len(before) == 1 and len(after) == 1 and after != before
    assert _phases_audited(rig, "host") == WALK
    # mwictl still works (its identity file was re-issued), and `status` shows one pin
    status = rig.ctl("status")
    assert f"CA pin     {after[0]}" in status and "Rotation" not in status


def test_host_ca_pins_during_rotation(rig):
    """`mwictl status` names both pins while the host CA rotates, and a pin of either
    lets a newcomer (an agent's or a bot's first join) trust the cluster."""
    old_pin = rig.pins(BUNDLE["host"])[0]
    rig.ctl("auth", "rotate", "--type=host", "--manual", "--phase=init")
    status = rig.ctl("status")
    pins_line = next(ln for ln in status.splitlines() if ln.startswith("CA pin"))
    new_pin = [p.strip() for p in pins_line[len("CA pin"):].split(",") if p.strip() != old_pin]
    assert len(new_pin) == 1 and "Rotation   host CA: init (manual)" in status
    got = fetch_cas_pinned(rig.topo.cluster.addr, [old_pin])
    assert len(certificates(got["host"].encode())) == 1  # only what the pin vouches for
    rig.ctl("auth", "rotate", "--type=host", "--manual", "--phase=update_clients")
    rig.ctl("auth", "rotate", "--type=host", "--manual", "--phase=update_servers")
    fetch_cas_pinned(rig.topo.cluster.addr, new_pin)  # the proxy now serves the new CA
    with pytest.raises(Exception, match="add that pin"):
        fetch_cas_pinned(rig.topo.cluster.addr, [old_pin])
    rig.ctl("auth", "rotate", "--type=host", "--manual", "--phase=rollback")
    rig.bot_follows("host")
    rig.all_connections_work("host CA, rollback")
    rig.ctl("auth", "rotate", "--type=host", "--manual", "--phase=standby")
    rig.bot_follows("host")
    rig.all_connections_work("host CA, rolled back")
    assert rig.pins(BUNDLE["host"]) == [old_pin]  # the rollback kept the old CA


def test_user_ca_rotation_automatic(rig):
    """The automatic mode: the cluster walks the phases a third of the grace period apart;
    the bot renews into the new user CA before the old one is dropped."""
    before = rig.pins(BUNDLE["user"])
    said = rig.ctl("auth", "rotate", "--type=user", "--grace-period=24s")
    assert "The user CA is now in phase init (automatic)." in said
    assert "update_servers at" in said
    phases = []
    while not phases or phases[-1] != "standby":
        phase = wait_until(lambda: (p := rig.admin("rotation_status")["user"]["phase"]) != (
            phases[-1] if phases else "") and p, timeout=30, what="the next automatic phase")
        phases.append(phase)
        rig.bot_follows("user")
        rig.all_connections_work(f"user CA, {phase} (automatic)")
    after = rig.pins(BUNDLE["user"])
    assert len(after) == 1 and after != before
    assert _phases_audited(rig, "user") == WALK


def test_db_client_ca_rotation(rig):
    """The database trusts the client CAs named in `auth sign`'s server.cas: re-signed
    after init (both CAs) and after standby (the new one alone)."""
    def operator(phase: str) -> None:
        if phase in ("init", "standby"):
            rig.reload_database_certs()
    _walk(rig, "db_client", operator)
    cas = (rig.topo.pg.data / "server.cas").read_bytes()
    assert len(certificates(cas)) == 1
    assert _phases_audited(rig, "db_client") == WALK


@dataclass
class ViaAgent:
    agent: Agent
    tunnel: LocalProxyProcess
    session: psycopg.Connection[Any]

    def said(self, text: str) -> int:
        return self.agent.log.read_text().count(text)

    def works(self, rig: Rig, when: str) -> None:
        res = rig.topo.psql(rig.topo.dsn(self.tunnel), SELECT)
        assert res.stdout.strip() == "alice|42", f"{when} (via the agent): {res.stderr}"
        assert self.session.execute(SELECT).fetchone() == ("alice", 42), when
        rig.all_connections_work(when)


@pytest.fixture(scope="module")
def via_agent(rig: Rig) -> Iterator[ViaAgent]:
    agent = Agent(rig.topo, "rot")
    agent.start(token=db_token(rig.topo))
    wait_until(lambda: AGENT_SERVICE in rig.ctl("db", "ls"), what="the agent's database")
    out = rig.topo.bot_output("via-agent", service=AGENT_SERVICE)
    tunnel = rig.topo.local_proxy(out, tunnel=True, service=AGENT_SERVICE)
    session = psycopg.connect(rig.topo.dsn(tunnel))
    yield ViaAgent(agent, tunnel, session)
    session.close()
    agent.stop()


TRUSTS = "the cluster's CA bundles changed"
REISSUED = "identity re-issued by the cluster's new CA"


def test_agent_ca_rotation(rig, via_agent):
    """The agent CA signs agents' server certificates: the proxy trusts both while the
    agent renews into the new one on its next heartbeat."""
    for phase in WALK:
        reissued = via_agent.said(REISSUED)
        rig.ctl("auth", "rotate", "--type=agent", "--manual", f"--phase={phase}")
        if phase == "update_clients":  # the signer changed: the agent renews
            wait_until(lambda n=reissued: via_agent.said(REISSUED) > n, timeout=30,
                       what="the agent to renew from the new agent CA")
        via_agent.works(rig, f"agent CA, {phase}")
    assert _phases_audited(rig, "agent") == WALK


def test_db_ca_rotation(rig, via_agent):
    """The db CA signs databases' server certificates: the cluster's engines and the
    agent trust both from init on; the operator re-signs the database in update_servers."""
    for phase in WALK:
        trusts = via_agent.said(TRUSTS)
        rig.ctl("auth", "rotate", "--type=db", "--manual", f"--phase={phase}")
        if phase in ("init", "standby"):  # the trusted set changed: the agent follows
            wait_until(lambda n=trusts: via_agent.said(TRUSTS) > n, timeout=30,
                       what="the agent to take the new db CA bundle")
        if phase == "update_servers":
            rig.reload_database_certs()
        via_agent.works(rig, f"db CA, {phase}")
    assert _phases_audited(rig, "db") == WALK


def test_every_phase_is_in_the_audit_log_with_who_and_pins(rig):
    events = rig.topo.audit("ca.rotate.phase")
    assert events, "no rotation was audited"
    for e in events:
        assert e["by"] in ("admin", "auto") and e["active"].startswith("sha256:")
        assert e["trusted"] and e["active"] in e["trusted"]
    assert json.loads(json.dumps(events))  # stored as plain JSON
