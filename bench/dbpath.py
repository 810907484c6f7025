"""What the whole-data-path benches share (bench.pgbench_topology, bench.engines): the
HAProxy topology, client certificates from the cluster's database-client CA, proxy CPU
from /proc, percentiles and the machine lines.

The HAProxy topology stands where mwiproxy's two proxies stand: one HAProxy on the
"service host" (plain TCP in, TLS out with a client certificate), one at the "cluster
side" terminating that TLS (verifying the client certificate) and forwarding to the
database. How the last leg reaches the database is the caller's `backend` (a HAProxy
`server` line's address and options): plain TCP where the database's TLS is in-protocol
(PostgreSQL's SSLRequest, MySQL's SSL request packet: the client's own TLS rides
through), TLS with a database-client certificate where it is TLS from the first byte
(Redis).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

from mwiproxy.devkit.ports import free_port
from mwiproxy.identity.authorities import (
    AuthoritySet,
    cert_pem,
    create_authority,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.identity.certs import Identity

CLK_TCK = os.sysconf("SC_CLK_TCK")
CLUSTER_NAME = "mwiproxy.local"

HAPROXY_GLOBAL = """global
  maxconn 4096
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
"""


def write_secret(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return str(path)


def db_client_cert(data_dir: Path, root: Path, user: str) -> tuple[str, str]:
    """(cert, key) files the database accepts for `user` (CN=user from the cluster's
    db_client CA, under the cluster's `data_dir`), for the direct and HAProxy paths where
    the client speaks TLS to the database, or where HAProxy does for it."""
    cas = AuthoritySet.load_or_create(data_dir / "ca", CLUSTER_NAME)
    key = generate_private_key()
    cert = cas["db_client"].sign_database_user(user, key.public_key(), dt.timedelta(hours=2))
    return (write_secret(root / f"{user}.crt", cert_pem(cert)),
            write_secret(root / f"{user}.key", private_key_pem(key)))


def db_server_ca(data_dir: Path, root: Path) -> str:
    """The CA file the database's server certificate (`mwictl auth sign --format=db`)
    chains to, for clients that verify it."""
    cas = AuthoritySet.load_or_create(data_dir / "ca", CLUSTER_NAME)
    path = root / "db-ca.crt"
    path.write_bytes(cas["db"].cert_pem)
    return str(path)


def start_haproxies(root: Path, backend: str, name: str = "db"
                    ) -> tuple[int, list[subprocess.Popen[bytes]]]:
    """The two HAProxies in front of `backend` (e.g. `127.0.0.1:5432`, or with ` ssl crt
    … ca-file … verify required` for a TLS database); returns the service-host port the
    client connects to and both processes (service host first)."""
    host_ca, user_ca = create_authority("host", "ha"), create_authority("user", "ha")
    skey, ckey = generate_private_key(), generate_private_key()
    server = host_ca.sign_server("localhost", ["localhost", "127.0.0.1"], skey.public_key(),
                                 dt.timedelta(hours=2))
    client = user_ca.sign_identity(Identity(user="bot-ha", bot_name="ha"), ckey.public_key(),
                                   dt.timedelta(hours=2))
    files = {n: write_secret(root / f"ha-{name}-{n}", data) for n, data in (
        ("server.pem", cert_pem(server) + private_key_pem(skey)),
        ("client.pem", cert_pem(client) + private_key_pem(ckey)),
        ("host-ca.crt", host_ca.cert_pem), ("user-ca.crt", user_ca.cert_pem))}
    edge, service = free_port(), free_port()
    configs = {
        "service-host": f"frontend svc\n  bind 127.0.0.1:{service}\n  default_backend up\n"
                        f"backend up\n  server edge 127.0.0.1:{edge} ssl crt "
                        f"{files['client.pem']} ca-file {files['host-ca.crt']} verify required"
                        " sni str(localhost) verifyhost localhost\n",
        "cluster-side": f"frontend edge\n  bind 127.0.0.1:{edge} ssl crt {files['server.pem']}"
                        f" ca-file {files['user-ca.crt']} verify required\n"
                        f"  default_backend db\nbackend db\n  server db {backend}\n",
    }
    procs = []
    try:
        for side, body in configs.items():
            cfg = root / f"haproxy-{name}-{side}.cfg"
            cfg.write_text(HAPROXY_GLOBAL + body)
            check = subprocess.run(["haproxy", "-c", "-q", "-f", str(cfg)],
                                   capture_output=True, text=True)
            if check.returncode != 0:
                raise RuntimeError(f"haproxy refused {cfg}: {check.stdout}{check.stderr}")
            procs.append(subprocess.Popen(["haproxy", "-db", "-f", str(cfg)],
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        for port in (edge, service):
            wait_listening(port, procs)
    except BaseException:
        stop_all(procs)
        raise
    return service, procs


def wait_listening(port: int, procs: list[subprocess.Popen[bytes]], timeout: float = 20.0
                   ) -> None:
    """Until 127.0.0.1:`port` accepts a connection (raises if one of `procs` exits)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            pass
        dead = [p.args for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on 127.0.0.1:{port} (exited: {dead})")
        time.sleep(0.05)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_ticks(pids: list[int]) -> int:
    """utime + stime of `pids`, in clock ticks (fields 14 and 15 of /proc/PID/stat)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total


def cpu_us_per(ticks: int, count: int) -> float:
    """CPU microseconds per request/transaction; 0 with no requests."""
    return ticks / CLK_TCK * 1e6 / count if count else 0.0


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of sorted `values` (nearest rank below); NaN when empty."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def first_line(*cmd: str) -> str:
    """The first line a command prints (stdout, else stderr); `?` if it cannot run."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return ((res.stdout.strip() or res.stderr.strip()).splitlines() or ["?"])[0]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine(*versions: str) -> str:
    """The machine lines of a results section; `versions`: the tools' version lines."""
    from mwiproxy import _native

    return "\n".join([
        f"- `uname -a`: {first_line('uname', '-a')}",
        f"- nproc: {os.cpu_count()}; CPU: {cpu_model()}; Python {platform.python_version()}; "
        f"native core: {'compiled' if _native.NATIVE else 'pure-Python'}",
        f"- {'; '.join(versions)}",
    ])
