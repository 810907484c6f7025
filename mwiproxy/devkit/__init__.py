"""The development kit: a real local PostgreSQL and a whole mwiproxy topology, for the
demo (`scripts/demo`), the benchmark (`bench/`) and the tests.

A public, supported module (floor 5: it may import anything in the package; nothing in
the package imports it). It starts real processes on 127.0.0.1 only:

- `postgres.PostgresServer` — PostgreSQL 15 from initdb in a temp dir (as the unprivileged
  `postgres` user when run as root), optionally TLS with certificate auth;
- `cluster.ClusterProcess` — `mwiproxy start`, driven with `mwictl`;
- `redis.RedisServer` — Redis 7, TLS only (`tls-auth-clients yes`), ACL users `nopass`
  (as the unprivileged `redis` user when run as root); `redis.start_redis` gives it a
  server certificate from `mwictl auth sign --format=db`;
- `agent.Agent` — a database agent (`mwiproxy start --roles=db`);
- `topology.start_topology` — cluster + PostgreSQL (server certificate from
  `mwictl auth sign --format=db`) + the guide's role, with bot credentials and local
  proxies (`mwibot proxy … db …`) on demand;
- `guide.GUIDE_ROLE` — the guide's role; `ports.free_port` — a free loopback port.

Failures raise AssertionError with the process's log, so a test shows why.
"""

from __future__ import annotations

from mwiproxy.devkit.agent import AGENT_SERVICE, Agent, db_token
from mwiproxy.devkit.cluster import ClusterProcess
from mwiproxy.devkit.guide import GUIDE_ROLE
from mwiproxy.devkit.ports import free_port
from mwiproxy.devkit.postgres import PostgresServer
from mwiproxy.devkit.redis import RedisServer, start_redis
from mwiproxy.devkit.topology import (
    CLUSTER_YAML,
    SERVICE,
    LocalProxyProcess,
    Topology,
    cluster_config,
    start_postgres,
    start_topology,
    wait_for,
)

__all__ = ["AGENT_SERVICE", "CLUSTER_YAML", "GUIDE_ROLE", "SERVICE", "Agent",
           "ClusterProcess", "LocalProxyProcess", "PostgresServer", "RedisServer", "Topology", "cluster_config",
           "db_token",
           "free_port", "start_postgres", "start_redis", "start_topology", "wait_for"]
