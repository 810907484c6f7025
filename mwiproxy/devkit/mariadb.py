"""A real MariaDB server on 127.0.0.1 (mariadb-install-db in a temp dir), for the demo,
the bench and the tests.

TLS only for users created with `REQUIRE SUBJECT`: the server certificate comes from the
cluster's db CA (`mwictl auth sign --format=db`) and `ssl-ca` is the cluster's
database-client CA (the `.cas` file), so a client certificate with `CN=alice` signs in as
`alice` with no password. mariadbd refuses to run as root, so when the kit runs as root
(CI does) the server runs as the unprivileged `mysql` system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mwiproxy.devkit.cluster import ClusterProcess
from mwiproxy.devkit.guide import GUIDE_ROLE
from mwiproxy.devkit.ports import free_port
from mwiproxy.devkit.topology import Topology

MARIADBD = Path(os.environ.get("MWI_MARIADBD", "/usr/sbin/mariadbd"))
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
CLIENT = shutil.which("mariadb") or shutil.which("mysql") or "/usr/bin/mysql"
START_TIMEOUT = 60.0


def available() -> bool:
    return MARIADBD.exists() and Path(INSTALL_DB).exists()


def _run_as() -> str:
    """The system user the server runs as ("" = this one)."""
    if os.getuid() != 0:
        return ""
    try:
        pwd.getpwnam("mysql")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "mysql"], check=True)
    return "mysql"


class MariaDBServer:
    def __init__(self, *, ssl_files: tuple[str, str, str] | None = None,
                 port: int | None = None) -> None:
        """ssl_files: (cert, key, ca) paths; port: the TCP port (default: a free one)."""
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mwi-maria-"))
        self.data = self.root / "data"
        self.socket = self.root / "mysqld.sock"
        self.ssl_files = ssl_files
        self.user = _run_as()
        self.proc: subprocess.Popen[bytes] | None = None
        os.chmod(self.root, 0o755)

    def _chown(self, path: Path) -> None:
        if self.user:
            pw = pwd.getpwnam(self.user)
            for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def _args(self) -> list[str]:
        args = [f"--datadir={self.data}", f"--socket={self.socket}", f"--port={self.port}",
                "--bind-address=127.0.0.1", "--skip-name-resolve", "--skip-log-bin",
                f"--pid-file={self.root / 'mysqld.pid'}", "--innodb-buffer-pool-size=32M",
                "--max-connections=300", "--innodb-flush-log-at-trx-commit=0",
                f"--log-error={self.root / 'log'}", "--local-infile=0"]
        if self.user:
            args.append(f"--user={self.user}")
        if self.ssl_files:
            cert, key, ca = (str(self.root / n) for n in ("server.crt", "server.key",
                                                          "server.cas"))
            args += [f"--ssl-cert={cert}", f"--ssl-key={key}", f"--ssl-ca={ca}",
                     "--tls-version=TLSv1.2,TLSv1.3"]
        return args

    def start(self) -> MariaDBServer:
        if self.ssl_files:
            for src, name in zip(self.ssl_files, ("server.crt", "server.key", "server.cas"),
                                 strict=True):
                shutil.copy(src, self.root / name)
                os.chmod(self.root / name, 0o600)
        self._chown(self.root)
        install = [INSTALL_DB, "--no-defaults", f"--datadir={self.data}",
                   "--auth-root-authentication-method=normal", "--skip-test-db"]
        if self.user:
            install.append(f"--user={self.user}")
        subprocess.run(install, check=True, capture_output=True)
        self._chown(self.root)
        self.proc = subprocess.Popen([str(MARIADBD), "--no-defaults", *self._args()],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited {self.proc.returncode}:\n{self.log_text()}")
            if self.socket.exists() and self._ping():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"mariadbd did not become ready:\n{self.log_text()}")

    def _ping(self) -> bool:
        res = subprocess.run([CLIENT, "--no-defaults", f"--socket={self.socket}", "-uroot",
                              "-e", "select 1"], capture_output=True)
        return res.returncode == 0

    def sql(self, sql: str, db: str = "") -> str:
        """Run `sql` as root (no password, unix socket only); tab-separated rows."""
        out = subprocess.run(
            [CLIENT, "--no-defaults", f"--socket={self.socket}", "-uroot", "-N", "-B",
             *([db] if db else []), "-e", sql],
            check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def add_cert_user(self, user: str, grants: dict[str, str]) -> None:
        """A user signing in by certificate only (`REQUIRE SUBJECT '/CN=<user>'`, no
        password), with `grants` {schema: privileges}."""
        self.sql(f"CREATE USER '{user}'@'%' REQUIRE SUBJECT '/CN={user}'")
        for schema, privileges in grants.items():
            self.sql(f"GRANT {privileges} ON `{schema}`.* TO '{user}'@'%'")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return (self.root / "log").read_text()
        except OSError:
            return ""


def start_mariadb(server: MariaDBServer, cluster: ClusterProcess, root: Path) -> MariaDBServer:
    """Start `server` with TLS from `cluster` (server certificate from `mwictl auth sign
    --format=db`, client CA the cluster's db_client CA) and the guide's users: `alice` and
    `bob` by certificate, each with every privilege on `example-db` (the guide's schema)
    and on `other-db` (a schema the guide's role does not list)."""
    out = root / "mariadb-server"
    cluster.ctl("auth", "sign", "--format=db", "--host=localhost,127.0.0.1", f"--out={out}",
                "--ttl=24h")
    server.ssl_files = (f"{out}.crt", f"{out}.key", f"{out}.cas")
    server.start()
    for schema in SCHEMAS:
        server.sql(f"CREATE DATABASE `{schema}`")
    for user in ("alice", "bob"):
        server.add_cert_user(user, {schema: "ALL PRIVILEGES" for schema in SCHEMAS})
    return server


SCHEMAS = ("example-db", "other-db")


SERVICE = "example-mysql"
CLUSTER_YAML = """\
version: v1
cluster_name: mwiproxy.local
data_dir: {{data_dir}}
diag_addr: 127.0.0.1:{diag_port}
proxy:
  listen_addr: 127.0.0.1:{{port}}
  ping_interval: 1s
databases:
  - name: example-mysql
    protocol: mysql
    uri: 127.0.0.1:{mysql_port}
    static_labels: {{{{env: dev}}}}
"""


@dataclass
class MySQLTopology(Topology):
    """The guide's topology with MariaDB in place of PostgreSQL (`pg` is unused)."""

    maria: MariaDBServer | None = None

    def metrics(self) -> str:
        """The cluster's /metrics page."""
        assert self.cluster.config_path is not None
        text = self.cluster.config_path.read_text()
        addr = text.split("diag_addr: ", 1)[1].split()[0]
        with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
            return str(r.read().decode())

    def stop(self) -> None:
        for lp in self.proxies:
            lp.stop()
        self.cluster.stop()
        if self.maria is not None:
            self.maria.stop()


@contextmanager
def start_mysql_topology(root: Path) -> Iterator[MySQLTopology]:
    """Cluster serving MariaDB as `example-mysql` + the guide's role (db_names
    [example-db], db_users [alice]) under `root`; stopped on exit with what it started."""
    server = MariaDBServer()
    config = CLUSTER_YAML.format(mysql_port=server.port, diag_port=free_port())
    cluster = ClusterProcess(root / "data", config=config).start()
    topology = MySQLTopology(root, cluster, None, maria=server)  # type: ignore[arg-type]
    try:
        start_mariadb(server, cluster, root)
        (root / "role.yaml").write_text(GUIDE_ROLE)
        cluster.ctl("create", "-f", str(root / "role.yaml"))
        yield topology
    finally:
        topology.stop()
