"""The cluster process against clients that connect and never authenticate: hundreds of
stalled sockets cost it no CPU, and over the per-address cap new connections are closed
at once, while a legitimate client (from another address) connects and queries."""

from __future__ import annotations

import os
import socket
import time

import pytest

from tests.e2e.conftest import LocalProxyProcess, Topology, wait_for

pytestmark = pytest.mark.integration

PARTIAL_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # 11 of 517 bytes
FIRSTS = [b"GE", b"\0\0", PARTIAL_HELLO, b""]
PER_SOURCE_CAP = 512  # proxy.max_unauthenticated_per_source, default


def _cpu_seconds(pid: int) -> float:
    """utime + stime of another process, from /proc (getrusage sees only our own)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stalled(topo: Topology, first: bytes, source: str) -> socket.socket:
    host, port = topo.cluster.addr.split(":")
    s = socket.create_connection((host, int(port)), timeout=10, source_address=(source, 0))
    if first:
        s.sendall(first)
    return s


def _closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _query(topo: Topology, lp: LocalProxyProcess) -> str:
    res = topo.psql(topo.dsn(lp), "select 40 + 2")
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_500_stalled_sockets_cost_the_cluster_no_cpu(topo, tunnel):
    assert topo.cluster.proc is not None
    pid = topo.cluster.proc.pid
    assert _query(topo, tunnel) == "42"  # warm: the first session's setup is not counted
    # spread over four addresses: each stays under the per-address cap
    socks = [_stalled(topo, FIRSTS[i % 4], f"127.0.0.{2 + i % 4}") for i in range(500)]
    try:
        time.sleep(1.0)  # the cluster accepts and peeks each of them
        before, start = _cpu_seconds(pid), time.monotonic()
        time.sleep(3.0)
        used = (_cpu_seconds(pid) - before) / (time.monotonic() - start)
        # a re-peek every 5 ms used to keep a whole core busy with far fewer
        assert used < 0.10, f"the cluster used {used:.0%} of a core"
        assert _query(topo, tunnel) == "42"
    finally:
        for s in socks:
            s.close()


def test_the_per_address_cap_closes_new_connections_at_once(topo, tunnel):
    held = [_stalled(topo, FIRSTS[i % 4], "127.0.0.10") for i in range(PER_SOURCE_CAP)]
    try:
        time.sleep(1.0)  # all of them accepted and counted
        over = _stalled(topo, b"GE", "127.0.0.10")
        # closed well before the handshake timeout (10 s) would have closed it
        assert _closed_by_server(over, within=5.0)
        over.close()
        # an authenticated session from another address is untouched
        assert _query(topo, tunnel) == "42"
        assert wait_for(lambda: "too many not yet authenticated" in topo.cluster.log.read_text())
        line = next(ln for ln in topo.cluster.log.read_text().splitlines()
                    if "too many not yet authenticated" in ln)
        assert "last refused from 127.0.0.10" in line and f"at most {PER_SOURCE_CAP} per source" in line
    finally:
        for s in held:
            s.close()
