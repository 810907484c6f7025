"""A real Redis 7 server on 127.0.0.1 speaking TLS only, for the demo and the tests.

Set up the way the README's Redis section tells an operator to (and as Teleport's Redis
guide does): `port 0` (no plaintext port), `tls-port`, `tls-auth-clients yes` with the
cluster's database-client CA (`server.cas` from `mwictl auth sign --format=db`) and the
server certificate from that command, and ACL users from a `users.acl` file.

Redis 7.0 does not map a client certificate to a user: a verified certificate only
admits the connection, which starts as `default`. The engine then signs in with
`AUTH <user> <anything>`, so the ACL users are `nopass` — the certificate (which only
the cluster's database-client CA issues, per session, as CN=<user>) is the credential;
the cluster proxy checks who may use which user before it dials. `default` is kept on
(a route naming no user uses it) but may be given `off` (`default_on=False`).

A Unix socket (mode 700, in the temp dir) is open too, for the tests' own admin access
(`admin(...)`: `CLIENT LIST`, `ACL LOG`), never for the proxy.

redis-server needs no root: when the kit runs as root (CI does) it runs as the
unprivileged `redis` system user (made if missing), like PostgreSQL does.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from mwiproxy.devkit.cluster import ClusterProcess
from mwiproxy.devkit.ports import free_port
from mwiproxy.devkit.processes import terminate

REDIS_SERVER = os.environ.get("MWI_REDIS_SERVER", "redis-server")
REDIS_CLI = os.environ.get("MWI_REDIS_CLI", "redis-cli")
RUN_AS = "redis"
ACL_RULES = "on nopass ~* &* +@all"


SERVICE = "example-redis"
# the cluster.yaml entry of a Redis (REDISPORT: its TLS port), to add to a template
DATABASE_YAML = """\
  - name: example-redis
    protocol: redis
    uri: 127.0.0.1:REDISPORT
    static_labels: {env: dev}
"""


def available() -> bool:
    return shutil.which(REDIS_SERVER) is not None and shutil.which(REDIS_CLI) is not None


def _run_as() -> list[str]:
    if os.getuid() != 0:
        return []
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", RUN_AS], check=True)
    return ["runuser", "-u", RUN_AS, "--"]


def users_acl(users: tuple[str, ...], default_on: bool = True) -> str:
    """The `users.acl` lines: each user with every command and key, admitted by its
    certificate alone (`nopass`), `default` on or off."""
    lines = [f"user default {ACL_RULES if default_on else 'off'}"]
    lines += [f"user {u} {ACL_RULES}" for u in users if u != "default"]
    return "\n".join(lines) + "\n"


class RedisServer:
    def __init__(self, *, tls_files: tuple[str, str, str] = ("", "", ""), users: tuple[str, ...] = (
                 "alice", "bob"), default_on: bool = True, port: int | None = None) -> None:
        """tls_files: (cert, key, ca) paths — the server's certificate and key and the CA
        its clients' certificates must chain to (set by start_redis; none: no TCP port at
        all, the Unix socket only); port: the TLS port (default: a free one)."""
        self.port = port or free_port()
        self.tls_files = tls_files
        self.users = users
        self.default_on = default_on
        self.root = Path(tempfile.mkdtemp(prefix="mwi-redis-"))
        self.socket = self.root / "redis.sock"
        self.log = self.root / "redis.log"
        self.prefix = _run_as()
        self.proc: subprocess.Popen[bytes] | None = None
        os.chmod(self.root, 0o755)

    def _chown(self) -> None:
        if self.prefix:
            pw = pwd.getpwnam(RUN_AS)
            for p in [self.root, *self.root.rglob("*")]:
                os.chown(p, pw.pw_uid, pw.pw_gid)

    @property
    def tls(self) -> bool:
        return all(self.tls_files)

    def config(self) -> str:
        tls = ["bind 127.0.0.1", f"tls-port {self.port}", "tls-cert-file server.crt",
               "tls-key-file server.key", "tls-ca-cert-file server.cas",
               "tls-auth-clients yes", 'tls-protocols "TLSv1.2 TLSv1.3"']
        return "\n".join([
            "port 0", *(tls if self.tls else []), "aclfile users.acl",
            f"unixsocket {self.socket}", "unixsocketperm 700",
            f"dir {self.root}", f"logfile {self.log}", "save \"\"", "appendonly no",
            "daemonize no", "protected-mode no", "databases 16", "",
        ])

    def start(self, timeout: float = 20.0) -> RedisServer:
        for src, name in zip(self.tls_files, ("server.crt", "server.key", "server.cas"),
                             strict=True):
            if src:
                shutil.copy(src, self.root / name)
                os.chmod(self.root / name, 0o600)
        (self.root / "users.acl").write_text(users_acl(self.users, self.default_on))
        (self.root / "redis.conf").write_text(self.config())
        self._chown()
        self.proc = subprocess.Popen([*self.prefix, REDIS_SERVER, str(self.root / "redis.conf")],
                                     cwd=self.root, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited {self.proc.returncode}:\n"
                                     f"{self.log_text()}")
            if self.socket.exists() and (not self.tls or self._accepts()):
                return self
            time.sleep(0.05)
        raise AssertionError(f"redis-server did not start:\n{self.log_text()}")

    def _accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def admin(self, *args: str) -> str:
        """A command as `default` over the Unix socket (the tests' view of the server)."""
        out = subprocess.run([REDIS_CLI, "-s", str(self.socket), *args], check=True,
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip()

    def client_users(self) -> list[str]:
        """The ACL user of each client connected over TLS (not the admin socket)."""
        users = []
        for line in self.admin("CLIENT", "LIST").splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if fields.get("laddr", "").endswith(f":{self.port}"):
                users.append(fields.get("user", ""))
        return users

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=5)
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log.read_text()
        except OSError:
            return ""


def start_redis(server: RedisServer, cluster: ClusterProcess, root: Path) -> RedisServer:
    """Start `server` with a server certificate from `mwictl auth sign --format=db`
    (its `.cas`, the database-client CA, is what client certificates must chain to)."""
    out = root / "redis-server"
    cluster.ctl("auth", "sign", "--format=db", "--host=localhost,127.0.0.1", f"--out={out}",
                "--ttl=24h")
    server.tls_files = (f"{out}.crt", f"{out}.key", f"{out}.cas")
    return server.start()
