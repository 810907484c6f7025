"""The agent's own check of the client certificate the cluster proxy forwards
(`LinkServer._check_client`): a proxy — or whoever holds a proxy identity — cannot invent
a client, point a real one at another database, or change its user or database. Every
certificate is made at test time."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from mwiproxy.config.cluster import DatabaseConfig, ProxyConfig
from mwiproxy.dbagent.link import Denied, LinkServer
from mwiproxy.engines.mongodb import MongoEngine
from mwiproxy.engines.mysql import MySQLEngine
from mwiproxy.engines.postgres import PostgresEngine
from mwiproxy.identity.authorities import AuthoritySet, generate_private_key
from mwiproxy.identity.certs import DatabaseRoute, Identity, subject_for
from mwiproxy.wire import agentlink

CLUSTER = "example.local"
SERVICE = "agent-pg"
ROUTE = DatabaseRoute(SERVICE, "postgres", username="alice", database="example-db")
HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def cas(tmp_path_factory) -> AuthoritySet:
    return AuthoritySet.load_or_create(tmp_path_factory.mktemp("ca"), CLUSTER)


@pytest.fixture(scope="module")
def link(cas) -> LinkServer:
    # all _check_client reads of the agent: the cluster's user CA (and the link's caps)
    agent = SimpleNamespace(identity=SimpleNamespace(cas={"user": cas["user"].cert_pem}),
                            config=SimpleNamespace(proxy=ProxyConfig()))
    return LinkServer(agent)  # type: ignore[arg-type]


def _cert(issuer: x509.Certificate, key, route: DatabaseRoute | None = ROUTE, *,
          start: dt.timedelta = -dt.timedelta(minutes=1), life: dt.timedelta = HOUR) -> bytes:
    """DER of a client certificate for bot-example, valid from now+start for life."""
    now = dt.datetime.now(dt.UTC)
    ident = Identity(user="bot-example", roles=("example-role",), route=route,
                     cluster=CLUSTER)
    cert = (x509.CertificateBuilder()
            .subject_name(subject_for(ident)).issuer_name(issuer.subject)
            .public_key(generate_private_key().public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + start).not_valid_after(now + start + life)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(Encoding.DER)


def _ours(cas: AuthoritySet, route: DatabaseRoute | None = ROUTE, **kw) -> bytes:
    return _cert(cas["user"].cert, cas["user"].key, route, **kw)


def _engine(kind: type, protocol: str):  # noqa: ANN202
    """Never dialed (no signer): the check only looks at which engine it is."""
    return kind(DatabaseConfig(SERVICE, protocol, "127.0.0.1:1"), None)


_PG = _engine(PostgresEngine, "postgres")


def _check(link: LinkServer, hello: agentlink.Hello, engine=None) -> Identity:  # noqa: ANN001
    return link._check_client(hello, engine or _PG)


def _hello(der: bytes, *, op=agentlink.OP_SESSION, service=SERVICE, db_user="alice",
           db_name="example-db") -> agentlink.Hello:
    return agentlink.Hello(op, service, db_user, der, db_name=db_name,
                           cancel=(1, 2) if op == agentlink.OP_CANCEL else None)


def test_a_client_of_this_cluster_for_this_session_passes(link, cas):
    client = _check(link, _hello(_ours(cas)))
    assert client.user == "bot-example" and client.route == ROUTE
    # a cancel carries no database name: the certificate's is not compared
    assert _check(link, _hello(_ours(cas), op=agentlink.OP_CANCEL, db_name=""))


def test_a_certificate_from_another_ca_is_refused(link, cas):
    """The cluster's db CA is not its user CA: a certificate it signed is no client."""
    with pytest.raises(Denied, match="not from this cluster's user CA"):
        _check(link, _hello(_cert(cas["db"].cert, cas["db"].key)))


def test_a_certificate_of_another_cluster_is_refused(link, cas, tmp_path):
    other = AuthoritySet.load_or_create(tmp_path / "other", "other.local")
    with pytest.raises(Denied, match="not from this cluster's user CA"):
        _check(link, _hello(_cert(other["user"].cert, other["user"].key)))


def test_a_ca_that_copies_our_user_cas_name_is_refused(link, cas):
    """Same issuer name, another key: the signature, not the name, decides."""
    impostor_key = generate_private_key()
    with pytest.raises(Denied, match="not from this cluster's user CA: bad signature"):
        _check(link, _hello(_cert(cas["user"].cert, impostor_key)))


@pytest.mark.parametrize(("start", "life"), [
    (-2 * HOUR, HOUR),  # expired an hour ago
    (HOUR, HOUR),  # not valid for another hour
])
def test_a_certificate_not_valid_now_is_refused(link, cas, start, life):
    with pytest.raises(Denied, match="is not valid now"):
        _check(link, _hello(_ours(cas, start=start, life=life)))


def test_a_certificate_routed_to_another_database_service_is_refused(link, cas):
    der = _ours(cas, DatabaseRoute("example-server", "postgres", "alice", "example-db"))
    with pytest.raises(Denied, match="does not route to 'agent-pg'"):
        _check(link, _hello(der))


def test_a_certificate_with_no_route_is_refused(link, cas):
    """A bot's own identity is no database certificate."""
    with pytest.raises(Denied, match="does not route to 'agent-pg'"):
        _check(link, _hello(_ours(cas, None)))


def test_a_session_for_another_database_user_is_refused(link, cas):
    with pytest.raises(Denied, match="for database user 'alice', not 'postgres'"):
        _check(link, _hello(_ours(cas), db_user="postgres"))
    # a cancel is checked for its user too
    with pytest.raises(Denied, match="not 'postgres'"):
        _check(link, _hello(_ours(cas), op=agentlink.OP_CANCEL, db_user="postgres"))


def test_a_session_for_another_database_is_refused(link, cas):
    with pytest.raises(Denied, match="for database 'example-db', not 'postgres'"):
        _check(link, _hello(_ours(cas), db_name="postgres"))


def test_garbage_is_refused(link):
    with pytest.raises(Denied, match="not from this cluster's user CA"):
        _check(link, _hello(b"\x30\x03junk"))


@pytest.mark.parametrize(("kind", "protocol"), [(MySQLEngine, "mysql"),
                                                (MongoEngine, "mongodb")])
def test_a_route_of_the_databases_own_protocol_passes_and_no_other(link, cas, kind,
                                                                  protocol):
    engine = _engine(kind, protocol)
    route = DatabaseRoute(SERVICE, protocol, username="alice", database="example-db")
    assert _check(link, _hello(_ours(cas, route)), engine).route == route
    with pytest.raises(Denied, match=f"is a {protocol} database: a postgres route"):
        _check(link, _hello(_ours(cas)), engine)
    with pytest.raises(Denied, match=f"is a postgres database: a {protocol} route"):
        _check(link, _hello(_ours(cas, route)))


def test_only_postgresql_has_cancel_requests(link, cas):
    route = DatabaseRoute(SERVICE, "mysql", username="alice")
    with pytest.raises(Denied, match="no cancel requests"):
        _check(link, _hello(_ours(cas, route), op=agentlink.OP_CANCEL, db_name=""),
               _engine(MySQLEngine, "mysql"))
