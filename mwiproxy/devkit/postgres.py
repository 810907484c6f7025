"""A real PostgreSQL 15 server on 127.0.0.1 (initdb in a temp dir), for the demo, the
bench and the tests.

PostgreSQL refuses to run as root, so when the kit runs as root (CI does) the server
runs as the unprivileged `postgres` system user and its files are handed to that user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from mwiproxy.devkit.ports import free_port

PG_BIN = Path(os.environ.get("MWI_PG_BIN", "/usr/lib/postgresql/15/bin"))


def available() -> bool:
    return (PG_BIN / "postgres").exists()


def _run_as() -> list[str]:
    if os.getuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
    return ["runuser", "-u", "postgres", "--"]


class PostgresServer:
    def __init__(self, *, ssl_files: tuple[str, str, str] | None = None,
                 hba: list[str] | None = None, port: int | None = None) -> None:
        """ssl_files: (cert, key, ca) paths; hba: pg_hba.conf lines (default: trust);
        port: the TCP port (default: a free one)."""
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mwi-pg-"))
        self.data = self.root / "data"
        self.ssl_files = ssl_files
        self.hba = hba or ["local all all trust", "host all all 127.0.0.1/32 trust"]
        self.prefix = _run_as()
        os.chmod(self.root, 0o755)

    def _chown(self, path: Path) -> None:
        if self.prefix:
            pw = pwd.getpwnam("postgres")
            for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def start(self) -> PostgresServer:
        self._chown(self.root)
        subprocess.run([*self.prefix, str(PG_BIN / "initdb"), "-D", str(self.data), "-U",
                        "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True)
        conf = [f"port = {self.port}", "listen_addresses = '127.0.0.1'",
                f"unix_socket_directories = '{self.root}'", "fsync = off",
                "max_connections = 200", "shared_buffers = 32MB"]
        if self.ssl_files:
            names = ("server.crt", "server.key", "server.cas")
            for src, name in zip(self.ssl_files, names, strict=True):
                shutil.copy(src, self.data / name)
                os.chmod(self.data / name, 0o600)
            conf += ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'",
                     "ssl_ca_file = 'server.cas'", "ssl_min_protocol_version = 'TLSv1.2'"]
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n")
        (self.data / "pg_hba.conf").write_text("\n".join(self.hba) + "\n")
        self._chown(self.data)
        subprocess.run([*self.prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w",
                        "-l", str(self.root / "log"), "start"], check=True, capture_output=True)
        return self

    def psql(self, sql: str, user: str = "postgres", db: str = "postgres") -> str:
        out = subprocess.run(
            [str(PG_BIN / "psql"), "-h", str(self.root), "-p", str(self.port), "-U", user,
             "-d", db, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m",
                        "immediate", "stop"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return (self.root / "log").read_text()
        except OSError:
            return ""
