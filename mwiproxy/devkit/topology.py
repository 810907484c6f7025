"""A whole topology on 127.0.0.1: PostgreSQL (cert auth, server cert from
`mwictl auth sign --format=db`) ← cluster process serving it as `example-server` ←
local proxy processes (`mwibot proxy … db …`) using bot credentials from the auth API.

`start_topology(root)` starts it with the guide's role created and stops it on exit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mwiproxy.auth.client import AuthClient
from mwiproxy.bot.credentials import Credentials
from mwiproxy.bot.destinations import DirectoryDestination
from mwiproxy.bot.outputs import render_database_output
from mwiproxy.devkit import postgres
from mwiproxy.devkit.cluster import ClusterProcess
from mwiproxy.devkit.guide import GUIDE_ROLE
from mwiproxy.devkit.ports import free_port
from mwiproxy.devkit.processes import terminate
from mwiproxy.identity.authorities import generate_private_key, private_key_pem, public_key_pem

SERVICE = "example-server"
CLUSTER_YAML = """\
version: v1
cluster_name: mwiproxy.local
data_dir: {data_dir}
proxy:
  listen_addr: 127.0.0.1:{port}
  ping_interval: 1s
databases:
  - name: example-server
    protocol: postgres
    uri: 127.0.0.1:PGPORT
    static_labels: {env: dev}
"""


@dataclass
class LocalProxyProcess:
    proc: subprocess.Popen[str]
    port: int
    log: Path

    def stop(self) -> None:
        terminate(self.proc, grace=5)


@dataclass
class Topology:
    root: Path
    cluster: ClusterProcess
    pg: postgres.PostgresServer
    proxies: list[LocalProxyProcess] = field(default_factory=list)

    @property
    def host_ca(self) -> bytes:
        return (self.cluster.data_dir / "ca" / "host.crt").read_bytes()

    def add_bot(self, name: str, roles: str = "example-role") -> str:
        self.cluster.ctl("bots", "add", name, f"--roles={roles}")
        tok = self.cluster.ctl("tokens", "add", "--type=bot", f"--bot-name={name}",
                               "--ttl=5m", "--format", "json").stdout
        return str(json.loads(tok)["token"])

    def bot_output(self, bot: str, *, username: str = "alice", database: str = "example-db",
                   ttl: str = "10m", service: str = SERVICE, roles: str = "example-role",
                   fmt: str = "") -> Path:
        """Join `bot` (with `roles`) and write a database output (`format: fmt`) for
        it, as `mwibot start` would."""
        key = generate_private_key()
        pub = public_key_pem(key.public_key()).decode()
        with AuthClient(self.cluster.addr, ca_pems=self.host_ca) as anon:
            joined = anon.call("join", token=self.add_bot(bot, roles), public_key=pub)
        with AuthClient(self.cluster.addr, ca_pems=self.host_ca,
                        cert_pem=joined["cert"].encode(), key_pem=private_key_pem(key)) as c:
            db_key = generate_private_key()
            got = c.call("issue_database_cert", public_key=public_key_pem(
                db_key.public_key()).decode(), service=service, database=database,
                username=username, ttl=ttl)
        return self.write_output(bot, private_key_pem(db_key), got["cert"].encode(),
                                 got["cas"], fmt)

    def write_output(self, name: str, key_pem: bytes, cert_pem: bytes, cas: dict[str, str],
                     fmt: str = "") -> Path:
        out = self.root / f"out-{name}"
        creds = Credentials(key_pem, cert_pem, (cas["host"].encode(),),
                            (cas["user"].encode(),), (cas["db"].encode(),))
        DirectoryDestination(str(out)).write_bundle(render_database_output(creds, fmt))
        return out

    def local_proxy(self, out: Path, *, tunnel: bool, check: bool = True, listen: str = "",
                    extra: tuple[str, ...] = (), service: str = SERVICE,
                    proxy: str = "") -> LocalProxyProcess:
        """`proxy`: the cluster address(es) (default: this topology's cluster)."""
        port = free_port()
        log = self.root / f"localproxy-{port}.log"
        cmd = [sys.executable, "-m", "mwiproxy.cli.mwibot", "proxy",
               f"--proxy={proxy or self.cluster.addr}", f"--destination-dir={out}", "db",
               f"--port={port}", *([f"--listen={listen}"] if listen else []),
               *(["--tunnel"] if tunnel else []), *extra, service]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
        lp = LocalProxyProcess(proc, port, log)
        self.proxies.append(lp)
        if check:
            line = proc.stdout.readline() if proc.stdout else ""
            assert "listening on" in line, f"local proxy failed: {line}{log.read_text()}"
        return lp

    def dsn(self, lp: LocalProxyProcess, out: Path | None = None, **kw: str) -> str:
        parts = {"host": "localhost", "port": str(lp.port), "user": "alice",
                 "dbname": "example-db", "connect_timeout": "10"}
        if out is None:
            parts["sslmode"] = "disable"
        else:
            parts.update(sslmode="verify-full", sslrootcert=f"{out}/teleport-host-ca.crt",
                         sslcert=f"{out}/tlscert", sslkey=f"{out}/key")
        parts.update(kw)
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def psql(self, dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["psql", dsn, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
                              capture_output=True, text=True, timeout=60)

    @property
    def ca_pin(self) -> str:
        info = json.loads((self.cluster.data_dir / "cluster.json").read_text())
        return str(info["host_ca_pin"])

    def stop(self) -> None:
        for lp in self.proxies:
            lp.stop()
        self.cluster.stop()
        self.pg.stop()

    def audit(self, kind: str) -> list[dict[str, object]]:
        # every event of the kind: the 1,000-client test alone writes thousands, and
        # mwictl reads them page by page (one auth API reply holds 4 MiB)
        out = self.cluster.ctl("audit", "--type", kind, "--format", "json",
                               "--limit", "1000000").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def start_postgres(pg: postgres.PostgresServer, cluster: ClusterProcess, root: Path) -> None:
    """Start `pg` with TLS and certificate auth (server certificate from `mwictl auth sign
    --format=db`), room for 1,000 clients, and the guide's users and database."""
    out = root / "server"
    cluster.ctl("auth", "sign", "--format=db", "--host=localhost,127.0.0.1", f"--out={out}",
                "--ttl=24h")
    pg.ssl_files = (f"{out}.crt", f"{out}.key", f"{out}.cas")
    pg.start()
    with open(pg.data / "postgresql.conf", "a") as f:
        f.write("max_connections = 1100\n")
    subprocess.run([*pg.prefix, str(postgres.PG_BIN / "pg_ctl"), "-D", str(pg.data), "-w",
                    "-l", str(pg.root / "log"), "restart"], check=True, capture_output=True)
    pg.psql("CREATE USER alice")
    pg.psql("CREATE USER bob")
    pg.psql('CREATE DATABASE "example-db" OWNER alice')


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.05) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def cluster_config(pg_port: int, template: str = CLUSTER_YAML) -> str:
    """A cluster.yaml template (CLUSTER_YAML by default) for a PostgreSQL on `pg_port`,
    ready for ClusterProcess (which fills in data_dir and port)."""
    return template.replace("{env: dev}", "{{env: dev}}").replace("PGPORT", str(pg_port))


@contextmanager
def start_topology(root: Path, template: str = CLUSTER_YAML,
                   kind: type[Topology] = Topology) -> Iterator[Topology]:
    """Cluster (from `template`, see cluster_config) + PostgreSQL + the guide's role under
    `root`, as a `kind` (a Topology subclass may change how it reads the cluster);
    everything it started (local proxies included) is stopped on exit."""
    pg = postgres.PostgresServer(hba=["local all all trust", "hostssl all all 127.0.0.1/32 cert"])
    cluster = ClusterProcess(root / "data", config=cluster_config(pg.port, template)).start()
    topology = kind(root, cluster, pg)
    try:
        start_postgres(pg, cluster, root)
        (root / "role.yaml").write_text(GUIDE_ROLE)
        cluster.ctl("create", "-f", str(root / "role.yaml"))
        yield topology
    finally:
        topology.stop()
