"""The raw paths a benchmark drives: each gives a sink port, an echo port and a process to bill.

direct: the back-end servers themselves (the physical limit).
core-native / core-pure: the raw core, NOT the product: bench.relayserver drives
`_native.Acceptor` + `Relay` (compiled or pure-Python build) with no identity, RBAC,
audit or database protocol. The product's own processes are measured by bench.product.
haproxy-16k / haproxy-64k: Debian's HAProxy in `mode tcp` (skipped, and said so, if absent).
TLS paths (the client speaks TLS 1.3, ECDSA P-256; back ends are plain except for direct):
direct-tls, haproxy-tls (`ssl crt`), core-native-tls / core-pure-tls (TLS <-> plain).
core-native* run the relay workers' default (one per core); core-native-1w-tls runs one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Running:
    name: str
    sink: int
    echo: int
    proc: subprocess.Popen[str] | None = None
    cleanup: list[str] = field(default_factory=list)
    tls: bool = False

    def cpu_seconds(self) -> float:
        """CPU the proxy process used so far, all threads (0 for the direct path)."""
        if self.proc is None:
            return 0.0
        total = 0
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])  # ns on CPU
        return total / 1e9

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        for f in self.cleanup:
            os.unlink(f)


def _spawn(argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    return proc, proc.stdout.readline()


@dataclass
class Backends:
    proc: subprocess.Popen[str]
    sink: int
    echo: int
    counted_sink: int
    tls_counted_sink: int
    tls_echo: int
    tls_dir: str


def start_backends(tls_dir: str) -> Backends:
    proc, line = _spawn([sys.executable, "-m", "bench.servers", "--tls-dir", tls_dir])
    sink, echo, counted, tls_counted, tls_echo = map(int, line.split())
    return Backends(proc, sink, echo, counted, tls_counted, tls_echo, tls_dir)


def _mwiproxy(name: str, sink: int, echo: int, pure: bool, tls_dir: str | None = None,
              workers: int = 0) -> Running:
    argv = [sys.executable, "-m", "bench.relayserver", "--target", str(sink),
            "--target", str(echo), f"--workers={workers}"] + (["--pure"] if pure else [])
    if tls_dir:
        argv += ["--tls-dir", tls_dir]
    proc, line = _spawn(argv, {"MWIPROXY_NO_EXTENSIONS": "1"} if pure else None)
    p_sink, p_echo, build = line.split()
    if build != ("pure" if pure else "native"):
        proc.terminate()
        raise RuntimeError(f"{name}: expected the {'pure' if pure else 'native'} build")
    return Running(name, int(p_sink), int(p_echo), proc, tls=tls_dir is not None)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _haproxy(name: str, sink: int, echo: int, bufsize: int | None,
             crt: str | None = None) -> Running:
    exe = shutil.which("haproxy")
    if exe is None:
        raise FileNotFoundError("haproxy is not installed (apt-get install haproxy)")
    p_sink, p_echo = _free_port(), _free_port()
    tune = f"    tune.bufsize {bufsize}\n" if bufsize else ""
    ssl = f" ssl crt {crt}" if crt else ""
    cfg = (f"global\n    maxconn 9950\n{tune}defaults\n    mode tcp\n"
           "    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n"
           f"listen sink\n    bind 127.0.0.1:{p_sink}{ssl}\n    server s 127.0.0.1:{sink}\n"
           f"listen echo\n    bind 127.0.0.1:{p_echo}{ssl}\n    server e 127.0.0.1:{echo}\n")
    fd, path = tempfile.mkstemp(suffix=".cfg")
    os.write(fd, cfg.encode())
    os.close(fd)
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: it can never block it
        proc = subprocess.Popen([exe, "-db", "-f", path], stdout=subprocess.DEVNULL,
                                stderr=log, text=True)
        time.sleep(0.3)
        if proc.poll() is not None:
            log.seek(0)
            why = log.read().strip().splitlines()[-1:] or ["?"]
            os.unlink(path)
            raise RuntimeError(f"haproxy exited with {proc.returncode}: {why[0]}")
    return Running(name, p_sink, p_echo, proc, [path], tls=crt is not None)


PATHS = ["direct", "core-native", "core-pure", "haproxy-16k", "haproxy-64k",
         "direct-tls", "core-native-tls", "core-native-1w-tls", "core-pure-tls", "haproxy-tls"]


def start(name: str, be: Backends) -> Running:
    sink, echo = be.sink, be.echo
    if name == "direct":
        return Running(name, sink, echo)
    if name == "core-native":
        return _mwiproxy(name, sink, echo, pure=False)
    if name == "core-pure":
        return _mwiproxy(name, sink, echo, pure=True)
    if name == "haproxy-16k":
        return _haproxy(name, sink, echo, None)
    if name == "haproxy-64k":
        return _haproxy(name, sink, echo, 65536)
    if name == "direct-tls":
        return Running(name, be.tls_counted_sink, be.tls_echo, tls=True)
    if name == "core-native-tls":
        return _mwiproxy(name, be.counted_sink, echo, pure=False, tls_dir=be.tls_dir)
    if name == "core-native-1w-tls":  # one relay worker (the default: one per core)
        return _mwiproxy(name, be.counted_sink, echo, pure=False, tls_dir=be.tls_dir,
                         workers=1)
    if name == "core-pure-tls":
        return _mwiproxy(name, be.counted_sink, echo, pure=True, tls_dir=be.tls_dir)
    if name == "haproxy-tls":
        return _haproxy(name, be.counted_sink, echo, None, crt=f"{be.tls_dir}/server.pem")
    raise ValueError(f"unknown path {name!r}; known: {', '.join(PATHS)}")
