"""The guide's step 4 for MongoDB: pymongo through the local proxy in both modes, the
cluster's MongoDB engine signing in with MONGODB-X509, every message's `$db` checked.

No MongoDB server can be installed here: the database is mockupdb (PyPI) behind TLS
requiring a client certificate of the database-client CA (tests/_testbase/mongomock.py).
"""

from __future__ import annotations

import re
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mwiproxy.devkit import postgres
from mwiproxy.devkit.agent import Agent, agent_yaml, db_token
from mwiproxy.devkit.guide import GUIDE_ROLE
from mwiproxy.devkit.ports import free_port
from mwiproxy.devkit.topology import (
    CLUSTER_YAML,
    LocalProxyProcess,
    Topology,
    start_topology,
    wait_for,
)
from mwiproxy.wire import mongodb as wire
from tests._testbase import mongomock
from tests._testbase.mongomock import HELLO, TLSMockupDB, server_context

pymongo = pytest.importorskip("pymongo")

pytestmark = pytest.mark.integration

MONGO = "example-mongo"
TEMPLATE = CLUSTER_YAML + f"""\
  - name: {MONGO}
    protocol: mongodb
    uri: 127.0.0.1:MONGOPORT
    static_labels: {{env: dev}}
"""
BOB_ROLE = GUIDE_ROLE.replace("example-role", "bob-role").replace("[alice]", "[bob]")


class Mongo:
    def __init__(self, topo: Topology, db: TLSMockupDB) -> None:
        self.topo, self.db = topo, db
        self._outs: dict[str, Path] = {}

    def output(self, bot: str, *, move_to_role: str = "", service: str = MONGO) -> Path:
        out = self.topo.bot_output(bot, service=service, fmt="mongo")
        if move_to_role:
            self.topo.cluster.ctl("bots", "update", bot, "--set-roles", move_to_role)
        return out

    def client(self, port: int, out: Path | None = None, **kw: object):
        uri = f"mongodb://localhost:{port}/"
        if out is not None:  # the guide's URI
            uri += f"?tls=true&tlsCAFile={out}/mongo.cas&tlsCertificateKeyFile={out}/mongo.crt"
        options: dict[str, object] = {"serverSelectionTimeoutMS": 8000,
                                      "connectTimeoutMS": 8000, **kw}
        return pymongo.MongoClient(uri, **options)


@pytest.fixture(scope="module")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mongo]:
    if not postgres.available():
        pytest.skip("PostgreSQL 15 not installed")
    root = tmp_path_factory.mktemp("mongo")
    port = free_port()
    template = TEMPLATE.replace("MONGOPORT", str(port)) + \
        f"diag_addr: 127.0.0.1:{free_port()}\n"  # the metrics
    with start_topology(root, template) as topo:
        out = root / "mongo-server"
        topo.cluster.ctl("auth", "sign", "--format=db", "--host=localhost,127.0.0.1",
                         f"--out={out}", "--ttl=24h")
        (root / "bob-role.yaml").write_text(BOB_ROLE)
        topo.cluster.ctl("create", "-f", str(root / "bob-role.yaml"))
        db = TLSMockupDB(server_context(f"{out}.crt", f"{out}.key", f"{out}.cas"), port)
        db.autoresponds(mongomock.mockupdb.OpMsg("find", "things"), cursor={"id": 0, "ns": "example-db.things",
                                        "firstBatch": [{"_id": 1, "x": "hello"}]})
        db.run()
        try:
            yield Mongo(topo, db)
        finally:
            db.stop()


def _sent(db: TLSMockupDB, name: str) -> list[tuple[str, str, dict]]:
    return [c for c in db.commands() if c[0] and c[0].lower() == name.lower()]


def test_tunnel_mode_reads_through_the_engine(mongo):
    lp = mongo.topo.local_proxy(mongo.output("mg-tunnel"), tunnel=True, service=MONGO)
    with mongo.client(lp.port, compressors="zlib") as client:
        assert client["example-db"].command("ping")["ok"] == 1.0
        assert client["example-db"].things.find_one() == {"_id": 1, "x": "hello"}
    assert "CN=alice" in mongo.db.subjects  # the engine's certificate, not the bot's
    auth = _sent(mongo.db, "authenticate")
    assert auth and all(doc["mechanism"] == "MONGODB-X509" and doc["user"] == "CN=alice"
                        and ns == "$external" for _, ns, doc in auth)
    hellos = _sent(mongo.db, "ismaster") + _sent(mongo.db, "hello")
    assert hellos and all("compression" not in doc for _, _, doc in hellos)
    finds = _sent(mongo.db, "find")
    assert finds and finds[-1][1] == "example-db"


def test_non_tunnel_mode_with_the_guides_uri(mongo):
    out = mongo.output("mg-plain")
    lp = mongo.topo.local_proxy(out, tunnel=False, service=MONGO)
    with mongo.client(lp.port, out) as client:
        assert client["example-db"].things.find_one() == {"_id": 1, "x": "hello"}
    starts = [e for e in mongo.topo.audit("db.session.start")
              if e.get("bot") == "mg-plain" and e["success"]]
    assert starts and starts[-1]["protocol"] == "mongodb"


def test_non_tunnel_mode_without_a_client_certificate_is_told_why(mongo):
    out = mongo.output("mg-nocert")
    lp = mongo.topo.local_proxy(out, tunnel=False, service=MONGO)
    uri = f"mongodb://localhost:{lp.port}/?tls=true&tlsCAFile={out}/mongo.cas"
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=3000) as client:
        with pytest.raises(pymongo.errors.PyMongoError) as err:
            client["example-db"].command("ping")
    assert "no client certificate was presented" in str(err.value)


def test_databases_the_role_does_not_allow_are_refused_per_message(mongo):
    lp = mongo.topo.local_proxy(mongo.output("mg-dbs"), tunnel=True, service=MONGO)
    seen = len(mongo.db.commands())
    with mongo.client(lp.port) as client:
        for db in ("other-db", "admin"):
            with pytest.raises(pymongo.errors.OperationFailure) as err:
                client[db].command("ping")
            assert err.value.code == 13
            assert f'"{db}"' in str(err.value) and "denied" in str(err.value)
        assert client["example-db"].command("ping")["ok"] == 1.0  # the session goes on
    reached = {ns for name, ns, _ in mongo.db.commands()[seen:] if name == "ping"}
    assert reached == {"example-db"}
    denied = [e for e in mongo.topo.audit("db.access.denied") if e.get("bot") == "mg-dbs"]
    assert {e["message_db"] for e in denied} >= {"other-db", "admin"}
    assert wait_for(lambda: any(
        e.get("bot") == "mg-dbs" and e["refused_messages"] >= 2
        for e in mongo.topo.audit("db.session.end")), 10)


def test_authentication_commands_are_refused(mongo):
    lp = mongo.topo.local_proxy(mongo.output("mg-auth"), tunnel=True, service=MONGO)
    seen = len(_sent(mongo.db, "saslStart"))
    with mongo.client(lp.port) as client:
        for command in ("saslStart", "logout", "authenticate"):
            with pytest.raises(pymongo.errors.OperationFailure) as err:
                client["example-db"].command(command, 1)
            assert "authenticates this connection itself" in str(err.value), command
    assert len(_sent(mongo.db, "saslStart")) == seen
    assert not _sent(mongo.db, "logout")


def test_a_user_the_roles_do_not_allow_is_told_why_at_the_first_message(mongo):
    out = mongo.output("mg-bob", move_to_role="bob-role")
    lp = mongo.topo.local_proxy(out, tunnel=True, service=MONGO)
    with mongo.client(lp.port, serverSelectionTimeoutMS=3000) as client:
        with pytest.raises(pymongo.errors.PyMongoError) as err:
            client["example-db"].command("ping")
    assert 'no role allows db_user "alice"' in str(err.value), err.value
    denied = [e for e in mongo.topo.audit("db.access.denied")
              if e.get("user") == "bot-mg-bob"]
    assert denied and denied[-1]["protocol"] == "mongodb" and denied[-1]["db_user"] == "alice"


def test_tunnel_mode_without_ping_framing(mongo):
    lp = mongo.topo.local_proxy(mongo.output("mg-noping"), tunnel=True, service=MONGO,
                                extra=("--no-ping",))
    with mongo.client(lp.port) as client:
        assert client["example-db"].things.find_one() == {"_id": 1, "x": "hello"}


def _first_error(mongo: Mongo, lp: LocalProxyProcess) -> str:
    """What the client is told at its first message (a connect-time error, held)."""
    with mongo.client(lp.port, serverSelectionTimeoutMS=3000) as client:
        with pytest.raises(pymongo.errors.PyMongoError) as err:
            client["example-db"].command("ping")
    return str(err.value)


@pytest.mark.parametrize("via_agent", [False, True])
def test_a_database_refusing_the_certificate_user_is_told_to_the_client(mongo, request,
                                                                       via_agent):
    """In this process or behind a database agent (`agent_db`, below), alike."""
    bot, service, db = ("mg-agent-x509", AGENT_MONGO, request.getfixturevalue("agent_db")[1]
                        ) if via_agent else ("mg-x509", MONGO, mongo.db)
    lp = mongo.topo.local_proxy(mongo.output(bot, service=service), tunnel=True,
                                service=service)
    refuse = db.autoresponds("authenticate", ok=0, errmsg="No verified subject name")
    try:
        told = _first_error(mongo, lp)
    finally:
        refuse.cancel()
    assert "refused MONGODB-X509 for CN=alice: No verified subject name" in told
    starts = [e for e in mongo.topo.audit("db.session.start") if e.get("bot") == bot]
    assert any(not e["success"] and "refused MONGODB-X509" in str(e["error"])
               for e in starts), starts


def test_a_locked_bot_s_live_session_is_cut_and_told_why(mongo):
    lp = mongo.topo.local_proxy(mongo.output("mg-locked"), tunnel=True, service=MONGO)
    errors: list[str] = []

    def refused() -> bool:
        try:
            client["example-db"].command("ping")
        except pymongo.errors.PyMongoError as e:
            errors.append(str(e))
            return True
        return False

    with mongo.client(lp.port, serverSelectionTimeoutMS=3000, retryReads=False) as client:
        assert client["example-db"].command("ping")["ok"] == 1.0
        mongo.topo.cluster.ctl("lock", "--bot=mg-locked", "--message", "incident 27")
        assert wait_for(refused, 20, step=0.2)
    assert "incident 27" in errors[0], errors
    assert wait_for(lambda: any(
        e.get("bot") == "mg-locked" and e["reason"] == "locked"
        for e in mongo.topo.audit("db.session.end")), 20)


@pytest.mark.parametrize("tunnel", [True, False], ids=["tunnel", "non-tunnel"])
def test_a_1_mib_command_passes_in_both_modes(mongo, tunnel):
    """pymongo writes `$db` last: a command whose body is over 64 KiB has it past the
    relay's window, and is judged on the whole message (natively, no violation). (The
    payload rides a ping and a find: mockupdb answers no insert.)"""
    bot = "mg-big-t" if tunnel else "mg-big-p"
    out = mongo.output(bot)
    lp = mongo.topo.local_proxy(out, tunnel=tunnel, service=MONGO)
    blob = "x" * (1 << 20)
    seen = len(mongo.db.commands())
    with mongo.client(lp.port, None if tunnel else out) as client:
        assert client["example-db"].command("ping", 1, blob=blob)["ok"] == 1.0
        assert client["example-db"].things.find_one({"b": blob}) == {"_id": 1, "x": "hello"}
        with pytest.raises(pymongo.errors.OperationFailure) as err:  # whole, then refused
            client["other-db"].command("ping", 1, blob=blob)
        assert err.value.code == 13
        assert client["example-db"].command("ping")["ok"] == 1.0
    big = [(name, ns) for name, ns, doc in mongo.db.commands()[seen:]
           if name in ("ping", "find") and len(str(doc)) > 1 << 20]
    assert big == [("ping", "example-db"), ("find", "example-db")]
    assert wait_for(lambda: any(
        e.get("bot") == bot and e["bytes_client_to_db"] > 2 << 20 and e["native"]
        and e["refused_messages"] >= 1 for e in mongo.topo.audit("db.session.end")), 10)


def test_a_refused_command_mid_session_then_an_allowed_one_on_the_same_connection(mongo):
    lp = mongo.topo.local_proxy(mongo.output("mg-mid"), tunnel=True, service=MONGO)
    seen = len(mongo.db.commands())
    with mongo.client(lp.port, maxPoolSize=1) as client:
        assert client["example-db"].command("ping")["ok"] == 1.0
        with pytest.raises(pymongo.errors.OperationFailure) as err:
            client["admin"].command("ping")
        assert err.value.code == 13
        assert client["example-db"].things.find_one() == {"_id": 1, "x": "hello"}
        with pytest.raises(pymongo.errors.OperationFailure):
            client["other-db"].command("insert", "t", documents=[{"v": "y" * 100_000}])
        assert client["example-db"].command("ping")["ok"] == 1.0
    reached = [(name, ns) for name, ns, _ in mongo.db.commands()[seen:]
               if name in ("ping", "find", "insert")]
    assert set(reached) == {("ping", "example-db"), ("find", "example-db")}
    assert wait_for(lambda: any(
        e.get("bot") == "mg-mid" and e["refused_messages"] >= 2 and e["reason"] == "eof"
        for e in mongo.topo.audit("db.session.end")), 10)


def test_mongodb_bytes_are_counted_in_the_metrics(mongo):
    lp = mongo.topo.local_proxy(mongo.output("mg-metrics"), tunnel=True, service=MONGO)
    with mongo.client(lp.port) as client:
        assert client["example-db"].things.find_one() == {"_id": 1, "x": "hello"}
    pattern = re.compile(r'mwiproxy_db_transmit_bytes_total\{([^}]*protocol="mongodb"[^}]*)'
                         r'\} (\S+)')

    def counted() -> set[str]:  # this service's series (the agent's tests count theirs)
        return {m.group(1) for m in pattern.finditer(_metrics(mongo.topo))
                if float(m.group(2)) > 0 and 'service="example-mongo"' in m.group(1)}

    assert wait_for(lambda: len(counted()) >= 2, 20)  # both directions


def _metrics(topo: Topology) -> str:
    addr = re.search(r"diag_addr: (\S+)", topo.cluster.config_path.read_text()).group(1)
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        return r.read().decode()


# -- MongoDB served by a database agent -------------------------------------------------

AGENT_MONGO = "agent-mongo"
AGENT_DOWN = "agent-mongo-down"  # registered by the agent, its database not listening
SMALL = 64 * 1024  # the agent's server announces this maxMessageSizeBytes


@pytest.fixture(scope="module")
def agent_db(mongo: Mongo) -> Iterator[tuple[Agent, TLSMockupDB]]:
    """A second mockupdb that only the agent is configured to reach."""
    out = mongo.topo.root / "mongo-server"  # the server certificate `mongo` signed
    db = TLSMockupDB(server_context(f"{out}.crt", f"{out}.key", f"{out}.cas"), free_port(),
                     hello={**HELLO, "maxMessageSizeBytes": SMALL})
    db.autoresponds(mongomock.mockupdb.OpMsg("find", "things"), cursor={
        "id": 0, "ns": "example-db.things", "firstBatch": [{"_id": 2, "x": "agent"}]})
    db.run()
    agent = Agent(mongo.topo, "mongo", template=agent_yaml(
        (AGENT_MONGO, "mongodb", f"127.0.0.1:{db.port}"),
        (AGENT_DOWN, "mongodb", f"127.0.0.1:{free_port()}")))
    try:
        agent.start(token=db_token(mongo.topo))
        listed = lambda: AGENT_DOWN in mongo.topo.cluster.ctl("db", "ls").stdout  # noqa: E731
        assert wait_for(listed, timeout=20), mongo.topo.cluster.ctl("db", "ls").stdout
        yield agent, db
    finally:
        agent.stop()
        db.stop()


@pytest.mark.parametrize("tunnel", [True, False])
def test_pymongo_through_a_database_agent_in_both_modes(mongo, agent_db, tunnel):
    """The agent signs in (TLS as CN=alice, MONGODB-X509); each message's `$db` is
    still checked at the cluster proxy."""
    _, db = agent_db
    bot = f"mg-agent-{'tunnel' if tunnel else 'plain'}"
    out = mongo.output(bot, service=AGENT_MONGO)
    lp = mongo.topo.local_proxy(out, tunnel=tunnel, service=AGENT_MONGO)
    with mongo.client(lp.port, None if tunnel else out) as client:
        assert client["example-db"].things.find_one() == {"_id": 2, "x": "agent"}
        with pytest.raises(pymongo.errors.OperationFailure) as err:
            client["other-db"].command("ping")
        assert err.value.code == 13 and '"other-db"' in str(err.value)
    assert "CN=alice" in db.subjects
    auth = _sent(db, "authenticate")
    assert auth and all(doc["mechanism"] == "MONGODB-X509" and doc["user"] == "CN=alice"
                        for _, _, doc in auth)
    assert not [c for c in _sent(db, "ping") if c[1] == "other-db"]
    starts = [e for e in mongo.topo.audit("db.session.start") if e.get("bot") == bot]
    assert starts and all(e["success"] and e["db_service"] == AGENT_MONGO for e in starts)
    assert wait_for(lambda: any(e.get("bot") == bot and e["refused_messages"] >= 1
                                for e in mongo.topo.audit("db.session.end")), 20)


def test_the_agents_servers_message_bound_holds_at_the_cluster_proxy(mongo, agent_db):
    """maxMessageSizeBytes comes back over the agent link: a message over it ends the
    session at the cluster proxy, unread."""
    lp = mongo.topo.local_proxy(mongo.output("mg-agent-big", service=AGENT_MONGO),
                                tunnel=True, service=AGENT_MONGO)
    with socket.create_connection(("127.0.0.1", lp.port), timeout=30) as s:
        s.sendall(wire.op_msg(0, {"ping": 1, "$db": "example-db"}, 1))
        assert s.recv(65536)  # the session is up
        s.sendall((SMALL + 1).to_bytes(4, "little") + bytes(12))  # a header over the bound
        while s.recv(65536):
            pass  # closed, not waiting for the rest
    # the relay's framer refuses the header (over max_message): a protocol violation
    assert wait_for(lambda: any(e.get("bot") == "mg-agent-big" and e["reason"] == "protocol"
                                and e.get("native") for e in mongo.topo.audit("db.session.end")),
                    20)


def test_an_unreachable_database_behind_the_agent_is_told_at_the_first_message(
        mongo, agent_db):
    lp = mongo.topo.local_proxy(mongo.output("mg-agent-down", service=AGENT_DOWN),
                                tunnel=True, service=AGENT_DOWN)
    told = _first_error(mongo, lp)
    assert f"cannot reach database '{AGENT_DOWN}'" in told, told


def test_a_stopped_agents_database_is_told_at_the_first_message(mongo, agent_db):
    """Last of the agent's tests: it stops the agent."""
    agent, _ = agent_db
    lp = mongo.topo.local_proxy(mongo.output("mg-agent-stop", service=AGENT_MONGO),
                                tunnel=True, service=AGENT_MONGO)
    agent.stop()  # its goodbye ends the registration at once
    gone = lambda: AGENT_MONGO not in mongo.topo.cluster.ctl("db", "ls").stdout  # noqa: E731
    assert wait_for(gone, timeout=15)
    told = _first_error(mongo, lp)
    assert f"'{AGENT_MONGO}' is not served by this cluster" in told, told
