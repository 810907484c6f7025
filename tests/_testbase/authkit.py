"""An auth service in-process, as the unit tests build it: SQLite state and CAs in a temp
dir, the guide's database `example-server` and role, and a clock the test can move."""

from __future__ import annotations

from pathlib import Path

from mwiproxy.auth.service import AuthService
from mwiproxy.auth.storage.base import Storage
from mwiproxy.auth.storage.sqlite import SQLiteStorage
from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.identity import oids
from mwiproxy.identity.authorities import AuthoritySet
from mwiproxy.identity.certs import Identity
from tests._testbase.fixtures import GUIDE_ROLE

CLUSTER = "example.local"
ADMIN = Identity(user="admin", usage=(oids.USAGE_ADMIN,), cluster=CLUSTER)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make_service(tmp_path: Path, clock: Clock | None = None,
                 storage: Storage | None = None) -> AuthService:
    """A fresh service (no roles yet), on SQLite unless given a storage; the caller closes
    `service.storage`."""
    storage = storage or SQLiteStorage(str(tmp_path / "state.db"))
    cas = AuthoritySet.load_or_create(tmp_path / "ca", CLUSTER)
    dbs = [DatabaseConfig(name="example-server", protocol="postgres", uri="localhost:5432",
                          static_labels={"env": "dev"})]
    kw = {"clock": clock} if clock is not None else {}
    return AuthService(cluster=CLUSTER, storage=storage, cas=cas, databases=dbs, **kw)


def guide_service(tmp_path: Path, clock: Clock | None = None,
                  storage: Storage | None = None) -> AuthService:
    """make_service with the guide's role created."""
    service = make_service(tmp_path, clock, storage)
    service.call("create_roles", ADMIN, {"yaml": GUIDE_ROLE})
    return service
