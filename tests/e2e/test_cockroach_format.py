"""The bot's `cockroach` output (cockroach/node.crt, node.key, ca.crt) with psql through
the local proxy, for a database of protocol `cockroachdb` in cluster.yaml. No
CockroachDB server can be installed here: it speaks PostgreSQL's protocol, so the
database behind the service is the dev kit's real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mwiproxy.devkit import postgres
from mwiproxy.devkit.topology import CLUSTER_YAML, Topology, start_topology

pytestmark = pytest.mark.integration

CRDB = "example-crdb"
TEMPLATE = CLUSTER_YAML + f"""\
  - name: {CRDB}
    protocol: cockroachdb
    uri: 127.0.0.1:PGPORT
    static_labels: {{env: dev}}
"""
WHO = "select current_user, current_database(), ssl from pg_stat_ssl where pid = pg_backend_pid()"


@pytest.fixture(scope="module")
def crdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, Path]]:
    if not postgres.available():
        pytest.skip("PostgreSQL 15 not installed")
    with start_topology(tmp_path_factory.mktemp("crdb"), TEMPLATE) as topo:
        yield topo, topo.bot_output("roach", service=CRDB, fmt="cockroach")


def test_the_output_has_the_cockroach_files_for_a_cockroachdb_route(crdb):
    _, out = crdb
    roach = out / "cockroach"
    assert (roach / "node.crt").read_bytes() == (out / "tlscert").read_bytes()
    assert (roach / "node.key").read_bytes() == (out / "key").read_bytes()
    ca = (roach / "ca.crt").read_bytes()
    # the Database CA (a CockroachDB node's) and the Host CA (the cluster proxy's, which
    # answers the client's own TLS through the local proxy)
    assert (out / "teleport-database-ca.crt").read_bytes() in ca
    assert (out / "teleport-host-ca.crt").read_bytes() in ca


def test_psql_with_the_cockroach_files_in_non_tunnel_mode(crdb):
    topo, out = crdb
    lp = topo.local_proxy(out, tunnel=False, service=CRDB)
    roach = out / "cockroach"
    dsn = topo.dsn(lp, sslmode="verify-full", sslrootcert=str(roach / "ca.crt"),
                   sslcert=str(roach / "node.crt"), sslkey=str(roach / "node.key"))
    res = topo.psql(dsn, WHO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "alice|example-db|t"
    starts = [e for e in topo.audit("db.session.start") if e["db_service"] == CRDB]
    assert starts and starts[-1]["success"] is True


def test_psql_in_tunnel_mode(crdb):
    topo, out = crdb
    lp = topo.local_proxy(out, tunnel=True, service=CRDB)
    res = topo.psql(topo.dsn(lp), WHO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "alice|example-db|t"

