"""`mwibot proxy`: a port or diagnostics address already in use names its flag."""

from __future__ import annotations

import socket
import subprocess
import sys

WIDE = 60.0


def _run(topo, out, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mwiproxy.cli.mwibot", "proxy",
                           f"--proxy={topo.cluster.addr}", f"--destination-dir={out}", "db",
                           "--tunnel", *flags, "example-server"],
                          capture_output=True, text=True, timeout=WIDE)


def test_mwibot_proxy_port_and_diag_addr_in_use_name_the_flag(topo, alice_out):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        addr = f"127.0.0.1:{port}"
        by_port = _run(topo, alice_out, f"--port={port}")
        by_listen = _run(topo, alice_out, f"--listen={addr}")
        diag = _run(topo, alice_out, "--port=0", f"--diag-addr={addr}")
    assert by_port.returncode == 1
    assert f"ERROR: --port {addr}: address already in use" in by_port.stderr, by_port.stderr
    assert f"ERROR: --listen {addr}: address already in use" in by_listen.stderr, \
        by_listen.stderr
    assert diag.returncode == 1
    assert f"ERROR: --diag-addr {addr}: address already in use" in diag.stderr, diag.stderr
