"""PgBouncer (Debian's) in front of a dev-kit PostgreSQL: clients authenticate with a
certificate (`auth_type = cert`, `client_tls_sslmode = verify-full`, the cluster's
Database CA), PgBouncer reaches PostgreSQL over its unix socket with a small pool.
Several instances share one port (`so_reuseport = 1`) when one process's file limit is
not enough; each has its own pidfile, log and (empty) unix socket directory.

Like PostgreSQL, it runs as the unprivileged `postgres` user when the kit runs as root.
"""

from __future__ import annotations

import os
import pwd
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from mwiproxy.devkit.postgres import PostgresServer, _run_as

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def available() -> bool:
    return os.path.exists(BINARY)


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class PgBouncers:
    """`instances` PgBouncer processes on `port` (every address in `listen`) in front of
    database `dbname` of `pg`; TLS files: (cert, key, client CA)."""

    root: Path
    pg: PostgresServer
    dbname: str
    port: int
    listen: list[str]
    tls: tuple[str, str, str]
    instances: int = 1
    max_client_conn: int = 15_000
    pool_size: int = 4
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def _ini(self, k: int) -> Path:
        d = self.root / f"bouncer-{k}"
        d.mkdir(mode=0o700, exist_ok=True)
        cert, key, ca = (shutil.copy(f, d / n) for f, n in
                         zip(self.tls, ("server.crt", "server.key", "client-ca.crt"),
                             strict=True))
        (d / "users.txt").write_text('"alice" ""\n')
        ini = d / "pgbouncer.ini"
        ini.write_text(f"""\
[databases]
{self.dbname} = host={self.pg.root} port={self.pg.port} dbname={self.dbname}

[pgbouncer]
listen_addr = {",".join(self.listen)}
listen_port = {self.port}
unix_socket_dir =
so_reuseport = 1
pidfile = {d}/pgbouncer.pid
logfile = {d}/pgbouncer.log
auth_type = cert
auth_file = {d}/users.txt
client_tls_sslmode = verify-full
client_tls_cert_file = {cert}
client_tls_key_file = {key}
client_tls_ca_file = {ca}
client_tls_protocols = tlsv1.2,tlsv1.3
pool_mode = transaction
default_pool_size = {self.pool_size}
max_db_connections = {self.pool_size * 2}
max_client_conn = {self.max_client_conn}
ignore_startup_parameters = extra_float_digits,options
log_connections = 0
log_disconnections = 0
""")
        for p in (d, *d.iterdir()):
            os.chmod(p, 0o700 if p.is_dir() else 0o600)
        if self.pg.prefix:
            pw = pwd.getpwnam("postgres")
            for p in (d, *d.iterdir()):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        return ini

    def start(self) -> PgBouncers:
        os.chmod(self.root, 0o755)
        for k in range(self.instances):
            ini = self._ini(k)
            # as root: switch user without runuser, whose PAM session would set the
            # soft file limit back to 1,024; the limit is raised to the hard one
            as_postgres = "postgres" if _run_as() else None
            self.procs.append(subprocess.Popen(
                [BINARY, "-q", str(ini)], stdout=subprocess.DEVNULL,
                stderr=open(self.root / f"bouncer-{k}.err", "wb"),
                preexec_fn=_raise_file_limit, user=as_postgres, group=as_postgres))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            for k, p in enumerate(self.procs):
                if p.poll() is not None:
                    raise RuntimeError(f"pgbouncer {k} exited {p.returncode}: "
                                       f"{self.log(k)[-2000:]}")
            if all((self.root / f"bouncer-{k}" / "pgbouncer.pid").exists()
                   for k in range(self.instances)):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"pgbouncer did not start: {self.log(0)[-2000:]}")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def log(self, k: int) -> str:
        text = ""
        for p in (self.root / f"bouncer-{k}" / "pgbouncer.log", self.root / f"bouncer-{k}.err"):
            try:
                text += p.read_text()
            except OSError:
                pass
        return text

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []
