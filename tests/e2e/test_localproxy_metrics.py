"""A real `mwibot proxy` (both modes) in front of the real topology: its /metrics show
the bytes a session moves while it is open (read from the native relay at scrape time),
active sessions up and back to 0, successes and the setup histograms, and its log holds
one line per connection with the same bytes. And `mwibot start database-tunnel`: the
tunnel's metrics on the bot's /metrics."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mwiproxy.devkit.ports import free_port
from mwiproxy.metrics import localproxy as m
from tests.e2e.conftest import SERVICE, LocalProxyProcess, Topology, wait_for
from tests.e2e.test_localproxy_service import BotTunnel, _get

pytestmark = pytest.mark.integration

ROWS, WIDTH = 2000, 1000  # a result of ~2 MB: at least ROWS * WIDTH bytes to the client
BIG = f"select repeat('x', {WIDTH}) from generate_series(1, {ROWS})"
LINE = re.compile(r"connection closed: service=(\S+) mode=(\S+) identity=(\S+) db_user=(\S+) "
                  r"db_name=(\S+) result=(\S+) reason=(\S+) client_to_server=(\d+) "
                  r"server_to_client=(\d+) duration=\S+ setup=(\S+)")


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(port: int, name: str, mode: str, **labels: str) -> float:
    return scrape(port).get((name, frozenset({"service": SERVICE, "mode": mode, **labels}
                                             .items())), -1.0)


def lines(lp: LocalProxyProcess) -> list[tuple[str, ...]]:
    return [match.groups() for match in LINE.finditer(lp.log.read_text())]


@pytest.mark.parametrize("tunnel", [True, False], ids=["tunnel", "non_tunnel"])
def test_a_session_is_measured_live_and_logged_once(topo: Topology, alice_out: Path,
                                                    tunnel: bool) -> None:
    mode = m.mode_of(tunnel)
    diag = free_port()
    lp = topo.local_proxy(alice_out, tunnel=tunnel, extra=(f"--diag-addr=127.0.0.1:{diag}",))
    try:
        assert value(diag, m.CONNECTIONS_ACTIVE, mode) == 0  # there before any connection
        dsn = topo.dsn(lp, None if tunnel else alice_out)
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(BIG).fetchall()
            assert len(rows) == ROWS
            assert value(diag, m.CONNECTIONS_ACTIVE, mode) == 1  # open: counted live
            assert wait_for(lambda: value(diag, m.TRANSMIT_BYTES_TOTAL, mode,
                                          direction="server_to_client") >= ROWS * WIDTH, 60)
            assert value(diag, m.TRANSMIT_BYTES_TOTAL, mode, direction="client_to_server") > 0
            assert not lines(lp)  # one line per connection, at its end only
        assert wait_for(lambda: value(diag, m.CONNECTIONS_ACTIVE, mode) == 0, 60)
        assert wait_for(lambda: lines(lp), 60)
        assert value(diag, m.CONNECTIONS_TOTAL, mode, result="success") == 1
        for histogram in (m.FIRST_BYTE_DURATION_SECONDS, m.UPSTREAM_DIAL_DURATION_SECONDS,
                          m.CONNECTION_DURATION_SECONDS):
            assert value(diag, histogram + "_count", mode) == 1, histogram
        expiry = scrape(diag)[(m.CREDENTIALS_EXPIRY_TIMESTAMP_SECONDS,
                               frozenset({"service": SERVICE}.items()))]
        assert expiry > 0
        down = value(diag, m.TRANSMIT_BYTES_TOTAL, mode, direction="server_to_client")
        up = value(diag, m.TRANSMIT_BYTES_TOTAL, mode, direction="client_to_server")
        (line,) = lines(lp)
        assert line[:6] == (SERVICE, mode, "bot-example", "alice", "example-db", "success")
        assert line[6] in ("eof", "reset_client")  # the client may close with unread bytes
        assert (int(line[7]), int(line[8])) == (up, down)  # the same counts, both ways
        assert line[9] != "-"  # the setup latency
    finally:
        lp.stop()


def test_the_bots_database_tunnel_is_measured_on_the_bots_metrics(topo: Topology) -> None:
    """`mwibot start database-tunnel`: one /metrics shows the bot's own families and its
    tunnel's local proxy, with the process collectors."""
    bot = BotTunnel(topo, "metrics-bot")
    try:
        assert wait_for(lambda: _get(bot.diag_port, "/readyz")[0] == 200, 30), \
            bot.log.read_text()
        res = topo.psql(f"host=127.0.0.1 port={bot.port} user=alice dbname=example-db "
                        "sslmode=disable", BIG)
        assert res.returncode == 0 and len(res.stdout.split()) == ROWS, res.stderr
        assert wait_for(lambda: value(bot.diag_port, m.CONNECTIONS_ACTIVE, "tunnel") == 0, 60)
        assert value(bot.diag_port, m.TRANSMIT_BYTES_TOTAL, "tunnel",
                     direction="server_to_client") >= ROWS * WIDTH
        assert value(bot.diag_port, m.CONNECTIONS_TOTAL, "tunnel", result="success") == 1
        names = {name for name, _ in scrape(bot.diag_port)}
        assert {"mwibot_renewals_total", "process_cpu_seconds_total", "python_info"} <= names
        assert wait_for(lambda: "connection closed: service=example-server mode=tunnel "
                        "identity=bot-metrics-bot" in bot.log.read_text(), 60)
    finally:
        bot.stop()
