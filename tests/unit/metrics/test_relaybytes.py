"""RelayBytes: a Pipe's bytes (count_as) read from the relay engine at scrape time, live
sessions included, one family per label count on a shared engine."""

from __future__ import annotations

import asyncio
import socket

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mwiproxy import _native
from mwiproxy.metrics.relaybytes import RelayBytes
from mwiproxy.relay.pipe import Pipe
from mwiproxy.relay.streams import SocketStream

from .test_localproxy_metrics import until

LABELS = ("service", "protocol", "mode", "direction")


def samples(registry: CollectorRegistry) -> dict[tuple[str, ...], float]:
    """(name, label values in LABELS order) -> value."""
    text = generate_latest(registry).decode()
    return {(s.name, *(s.labels[k] for k in LABELS if k in s.labels)): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_pipe_bytes_are_read_live_per_family() -> None:
    registry = CollectorRegistry()

    async def main() -> dict[tuple[str, ...], float]:
        loop = asyncio.get_running_loop()
        two = RelayBytes("x_bytes_total", "Two labels.", ("service", "mode"), loop)
        three = RelayBytes("y_bytes_total", "Three labels.", ("service", "protocol", "mode"),
                           loop)
        registry.register(two)
        registry.register(three)
        three.start(("db", "postgres", "tunnel"))  # reported at 0 from now
        client, inner_a = socket.socketpair()
        inner_b, server = socket.socketpair()
        for s in (client, server):
            s.setblocking(False)
        pipe = Pipe(SocketStream(inner_a), SocketStream(inner_b), count_as=("db", "tunnel"))
        task = asyncio.ensure_future(pipe.run())
        await loop.sock_sendall(client, b"q" * 1000)
        got = b""
        while len(got) < 1000:
            got += await loop.sock_recv(server, 65536)
        await loop.sock_sendall(server, b"r" * 50_000)
        got = b""
        while len(got) < 50_000:
            got += await loop.sock_recv(client, 65536)
        key = ("x_bytes_total", "db", "tunnel", "server_to_client")
        await until(lambda: samples(registry).get(key) == 50_000)
        live = samples(registry)
        assert not task.done()
        client.close()
        server.close()
        stats = await task
        assert (stats.bytes_a_to_b, stats.bytes_b_to_a) == (1000, 50_000)
        _native.close_engine(loop)
        return live

    live = asyncio.run(main())
    assert live[("x_bytes_total", "db", "tunnel", "client_to_server")] == 1000
    assert live[("y_bytes_total", "db", "postgres", "tunnel", "server_to_client")] == 0
    assert not [k for k in live if k[0] == "y_bytes_total" and k[1:3] == ("db", "tunnel")]
    assert samples(registry)[("x_bytes_total", "db", "tunnel", "server_to_client")] == 50_000
