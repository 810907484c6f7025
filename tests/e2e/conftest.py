"""One real topology shared by the e2e tests, started by the dev kit
(mwiproxy.devkit.topology): PostgreSQL (cert auth) ← cluster process serving it as
`example-server` ← local proxy processes using bot credentials from the auth API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mwiproxy.devkit import postgres
from mwiproxy.devkit.topology import (
    CLUSTER_YAML,
    SERVICE,
    LocalProxyProcess,
    Topology,
    start_postgres,
    start_topology,
    wait_for,
)

# The names the e2e tests import from here.
_start_postgres = start_postgres
__all__ = ["CLUSTER_YAML", "SERVICE", "LocalProxyProcess", "Topology", "_start_postgres",
           "wait_for"]


@pytest.fixture(scope="package")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    if not postgres.available():
        pytest.skip("PostgreSQL 15 not installed")
    with start_topology(tmp_path_factory.mktemp("e2e")) as topology:
        yield topology


@pytest.fixture(scope="package")
def alice_out(topo: Topology) -> Path:
    # no bot renews it: it must outlive the whole e2e package (past 10 min on a loaded box)
    return topo.bot_output("example", ttl="3h")


@pytest.fixture(scope="package")
def tunnel(topo: Topology, alice_out: Path) -> LocalProxyProcess:
    return topo.local_proxy(alice_out, tunnel=True)


@pytest.fixture(scope="package")
def passthrough(topo: Topology, alice_out: Path) -> LocalProxyProcess:
    return topo.local_proxy(alice_out, tunnel=False)
