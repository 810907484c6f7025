"""Every figure of one run of one path (the proxy started fresh for it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import idle, load, tlsload
from .paths import Running
from .tlspki import BenchPki


@dataclass(frozen=True)
class Plan:
    nbytes: int  # bulk bytes, 1 connection and (in total) 16 connections
    pings: int
    conns: int  # new connections for the connection-rate figures
    idle: int  # idle connections held (0: skip)
    streams: int = 16


def _cpu_us(run: Running, per: int, work: Callable[[], object]) -> tuple[object, float]:
    c0 = run.cpu_seconds()
    out = work()
    return out, (run.cpu_seconds() - c0) / per * 1e6


def measure(run: Running, plan: Plan, pki: BenchPki, say: Callable[[str], None]) -> dict[str, float]:
    """Figures (keys as in report.FIGURES); `say` reports progress."""
    m: dict[str, float] = {}
    ctx = pki.client_context() if run.tls else None
    say("bulk 1 conn")
    m["gbit"] = tlsload.bulk(run.sink, plan.nbytes, ctx) if ctx else load.bulk(run.sink, plan.nbytes)
    say(f"bulk {plan.streams} conns")
    m["gbit16"] = (tlsload.bulk_many(run.sink, plan.nbytes, plan.streams, ctx) if ctx
                   else load.bulk_many(run.sink, plan.nbytes, plan.streams))
    say("ping-pong")
    rtts, m["cpu_rt"] = _cpu_us(run, plan.pings, lambda: tlsload.ping_pong(run.echo, plan.pings, ctx)
                                if ctx else load.ping_pong(run.echo, plan.pings))
    assert isinstance(rtts, list)
    m["p50"], m["p99"] = load.percentile(rtts, 0.5), load.percentile(rtts, 0.99)
    say("new connections")
    if ctx:
        rate, m["cpu_conn"] = _cpu_us(run, plan.conns,
                                      lambda: tlsload.new_connections(run.echo, plan.conns, ctx))
        assert isinstance(rate, tuple)
        m["conn_s"] = rate[0]
        rate, m["cpu_conn_resumed"] = _cpu_us(
            run, plan.conns, lambda: tlsload.new_connections(run.echo, plan.conns, ctx, True))
        assert isinstance(rate, tuple)
        m["conn_s_resumed"], m["resumed_share"] = rate
    else:
        rate, m["cpu_conn"] = _cpu_us(run, plan.conns,
                                      lambda: load.new_connections(run.echo, plan.conns))
        assert isinstance(rate, float)
        m["conn_s"] = rate
    # direct-tls is skipped: its back end is a thread per connection (9,900 threads would
    # measure the back end, and slow the next path while they wind down)
    if plan.idle and run.name != "direct-tls":
        say(f"holding {plan.idle} idle connections")
        held = idle.hold(run, plan.idle, str(pki.ca) if ctx else None)
        m["held"], m["held_errors"], m["kib_idle"] = held.held, held.errors, held.kib_per_conn
    return m
