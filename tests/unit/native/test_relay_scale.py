"""The relay at size, both builds: 100 MB byte-exact, a slow reader with memory bounded,
and 5,000 concurrent connections from a client in another process (the fd limit)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import subprocess
import sys
import textwrap
from typing import Any

from mwiproxy._native import REASON_EOF

from .relaykit import Joined, run


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def _send_pattern(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int,
                        seed: int) -> str:
    """Send `size` pseudo-random bytes (made chunk by chunk: the sender holds ~1 MiB);
    return their sha256."""
    rng = random.Random(seed)
    h = hashlib.sha256()
    left = size
    while left > 0:
        chunk = rng.randbytes(min(left, 1 << 20))
        h.update(chunk)
        await loop.sock_sendall(sock, chunk)
        left -= len(chunk)
    sock.shutdown(socket.SHUT_WR)
    return h.hexdigest()


async def _recv_hash(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                     pause: float = 0.0) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    while chunk := await loop.sock_recv(sock, 256 << 10):
        h.update(chunk)
        n += len(chunk)
        if pause:
            await asyncio.sleep(pause)
    return n, h.hexdigest()


def test_100_mb_and_random_sizes_byte_exact_both_ways(relay_mod: Any) -> None:
    rng = random.Random(3)
    cases = [(100 << 20, rng.randrange(1, 4 << 20))]
    cases += [(rng.randrange(0, 8 << 20), rng.randrange(0, 8 << 20)) for _ in range(3)]

    async def body() -> None:
        loop = asyncio.get_running_loop()
        for up, down in cases:
            j = Joined(relay_mod.Relay, loop)
            j.relay.start()
            sent_up, sent_down, got_b, got_a = await asyncio.gather(
                _send_pattern(loop, j.a, up, up), _send_pattern(loop, j.b, down, down),
                _recv_hash(loop, j.b), _recv_hash(loop, j.a))
            assert got_b == (up, sent_up) and got_a == (down, sent_down)
            assert await j.done == REASON_EOF
            assert j.relay.stats()[:2] == (up, down)
            j.close()

    run(body, timeout=120)


def test_slow_reader_keeps_memory_bounded(relay_mod: Any) -> None:
    """A reader far slower than its writer: what the relay holds stays bounded (the
    writer is held back), however much passes through."""
    total = 96 << 20

    async def body() -> None:
        loop = asyncio.get_running_loop()
        j = Joined(relay_mod.Relay, loop)
        j.relay.start()
        rss0 = _rss_kib()
        peak = [rss0]

        async def watch() -> None:
            while not j.done.done():
                peak[0] = max(peak[0], _rss_kib())
                await asyncio.sleep(0.02)

        watcher = asyncio.ensure_future(watch())
        sent, (n, got) = await asyncio.gather(_send_pattern(loop, j.a, total, 7),
                                              _recv_hash(loop, j.b, pause=0.001))
        assert (n, got) == (total, sent)
        j.b.shutdown(socket.SHUT_WR)
        assert await j.done == REASON_EOF
        await watcher
        # 96 MiB went through; the relay may hold a pipe or buffer per direction, never
        # the backlog (the bound leaves room for the test's own allocator noise)
        assert (peak[0] - rss0) < 40 * 1024, f"RSS grew by {peak[0] - rss0} KiB"
        j.close()

    run(body, timeout=120)


_CLIENT = textwrap.dedent("""
    import asyncio, sys

    class Echo(asyncio.Protocol):
        def connection_made(self, t): self.t = t
        def data_received(self, d): self.t.write(d)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096)
        print(server.sockets[0].getsockname()[1], flush=True)
        port, count = map(int, (await loop.run_in_executor(None, sys.stdin.readline)).split())
        sem = asyncio.Semaphore(200)
        held = []

        async def one(i):
            async with sem:
                r, w = await asyncio.open_connection("127.0.0.1", port,
                                                     local_addr=(f"127.0.0.{2 + i % 8}", 0))
                w.write(b"%d;" % i)
                ok = await r.readuntil(b";") == b"%d;" % i
                held.append(w)
                return ok

        oks = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
        print(sum(o is True for o in oks), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)
        for w in held:
            w.close()
        await asyncio.sleep(0.5)

    asyncio.run(main())
""")


def test_5000_concurrent_connections_from_another_process(tls_mod: Any) -> None:
    count = 5000

    async def body() -> None:
        loop = asyncio.get_running_loop()
        child = subprocess.Popen([sys.executable, "-c", _CLIENT], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdin is not None and child.stdout is not None
        try:
            echo_port = int(await loop.run_in_executor(None, child.stdout.readline))
            srv = socket.create_server(("127.0.0.1", 0), backlog=4096)
            srv.setblocking(False)
            done: list[asyncio.Future[str]] = []

            def on_accept(fd: int) -> None:
                up = socket.create_connection(("127.0.0.1", echo_port))
                fut = loop.create_future()
                done.append(fut)
                tls_mod.Relay(loop, fd, up.detach(), on_done=fut.set_result).start()

            acc = tls_mod.Acceptor(loop, srv, on_accept)
            child.stdin.write(f"{srv.getsockname()[1]} {count}\n")
            child.stdin.flush()
            held = int(await loop.run_in_executor(None, child.stdout.readline))
            assert held == count
            assert len(done) == count and not any(f.done() for f in done)
            child.stdin.write("\n")
            child.stdin.flush()
            reasons = await asyncio.gather(*done)
            assert set(reasons) <= {REASON_EOF, "reset_a", "reset_b"}
            assert acc.stats().accepted == count
            acc.close()
            srv.close()
            tls_mod.close_engine(loop)
        finally:
            child.kill()
            child.wait()

    before = len(os.listdir("/proc/self/fd"))
    run(body, timeout=120)
    assert len(os.listdir("/proc/self/fd")) <= before + 2
