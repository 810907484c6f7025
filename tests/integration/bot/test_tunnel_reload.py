"""A SIGHUP keeps an unchanged database-tunnel serving (a real `mwibot start`, a real
cluster and PostgreSQL): its listening port, its open connections and its credentials
stay, new connections are never refused and its /readyz stays 200 through two reloads;
a tunnel whose listen address changed moves, a removed one stops listening."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from mwiproxy.devkit import postgres
from mwiproxy.devkit.topology import SERVICE, Topology, start_topology
from tests._testbase import ports
from tests._testbase.ports import free_port
from tests.integration.bot.botkit import BotProcess, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    if not postgres.available():
        pytest.skip("PostgreSQL 15 not installed")
    with start_topology(tmp_path_factory.mktemp("tunreload")) as topology:
        yield topology


def tunnel(name: str, port: int) -> dict[str, str]:
    return {"type": "database-tunnel", "name": name, "listen": f"tcp://127.0.0.1:{port}",
            "service": SERVICE, "database": "example-db", "username": "alice"}


def write_config(path: Path, topo: Topology, token: str, diag: int,
                 services: list[dict[str, Any]]) -> None:
    doc = {"version": "v2", "proxy_server": topo.cluster.addr,
           "onboarding": {"join_method": "token", "token": token, "ca_pins": [topo.ca_pin]},
           "storage": {"type": "directory", "path": str(path.parent / "storage")},
           "credential_ttl": "1h", "renewal_interval": "20m",
           "diag_addr": f"127.0.0.1:{diag}", "services": services}
    text = yaml.safe_dump(doc, sort_keys=False)
    tmp = path.with_suffix(".tmp")  # the bot reads a whole file, never a half-written one
    tmp.write_text(text)
    tmp.replace(path)


def refused(port: int) -> bool:
    return ports.refused(port, timeout=10)


def ready(bot: BotProcess, name: str) -> object:
    """The service's `ready` on /readyz (None when /readyz did not answer)."""
    return bot.readyz().get("services", {}).get(name, {}).get("ready")


def connect(port: int) -> psycopg.Connection[Any]:
    return psycopg.connect(f"host=127.0.0.1 port={port} user=alice dbname=example-db "
                           "sslmode=disable connect_timeout=30", autocommit=True)


class Every20ms:
    """Runs `probe()` every ~20 ms in the background and keeps every answer."""

    def __init__(self, probe: Callable[[], object]) -> None:
        self.probe, self.answers = probe, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.answers.append(self.probe())

    def __enter__(self) -> Every20ms:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_a_reload_keeps_an_unchanged_tunnel_and_moves_or_stops_the_others(topo, tmp_path):
    keep, move, moved, gone, diag = (free_port() for _ in range(5))
    config = tmp_path / "tbot.yaml"
    token = topo.add_bot("reload-bot")
    write_config(config, topo, token, diag,
                 [tunnel("keep", keep), tunnel("move", move), tunnel("gone", gone)])
    bot = BotProcess(config, diag).start()
    try:
        wait_until(lambda: bot.get("/readyz")[0] == 200, 60, "the three tunnels ready")
        log = bot.log_text
        listening = f"database-tunnel {SERVICE}: listening on 127.0.0.1:"
        assert log().count(listening) == 3
        with connect(keep) as session:
            assert session.execute("SELECT 1").fetchone() == (1,)
            with Every20ms(lambda: refused(keep)) as dials, \
                    Every20ms(lambda: ready(bot, "keep")) as keep_ready:
                write_config(config, topo, token, diag, [tunnel("keep", keep),
                                                         tunnel("move", moved)])
                bot.signal(signal.SIGHUP)
                wait_until(lambda: ready(bot, "move") and not refused(moved),
                           60, "the changed tunnel listening on its new port")
                wait_until(lambda: refused(move) and refused(gone), 60,
                           "the old port and the removed tunnel closed")
                bot.signal(signal.SIGHUP)  # the same file again: nothing restarts
                wait_until(lambda: log().count("unchanged, its listener stays") == 3, 60,
                           "the second reload")
                # each reload's new Renewer renews into the kept holder at once
                wait_until(lambda: log().count("renewed output keep") >= 3, 60,
                           "the kept tunnel renewed after both reloads")
                wait_until(lambda: len(dials.answers) >= 20 and len(keep_ready.answers) >= 5, 60,
                           "probes after the reloads")
            # the session opened before the reloads still works
            assert session.execute("SELECT 2").fetchone() == (2,)
        assert dials.answers and not any(dials.answers), "a connection was refused"
        answered = [a for a in keep_ready.answers if a is not None]  # None: no answer
        assert answered and all(answered), keep_ready.answers
        # one listener more (the moved one): the kept tunnel never listened again
        assert log().count(listening) == 4, log()
        assert log().count(f"{listening}{keep}\n") == 1 and f"{listening}{moved}\n" in log()
        with connect(keep) as fresh:  # with the credentials renewed into the same holder
            assert fresh.execute("SELECT 3").fetchone() == (3,)
        with connect(moved) as other:
            assert other.execute("SELECT 4").fetchone() == (4,)
        assert bot.readyz()["status"] == "healthy"
    finally:
        assert bot.stop() == 0


def test_a_tunnel_whose_port_is_taken_names_its_listen_setting(topo, tmp_path):
    """The bot keeps running (its other outputs need it); the tunnel's /readyz and the
    log say which tunnel's `listen` could not be bound, not a bare [Errno 98]."""
    diag = free_port()
    config = tmp_path / "tbot.yaml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        write_config(config, topo, topo.add_bot("taken-bot"), diag, [tunnel("busy", port)])
        bot = BotProcess(config, diag).start()
        try:
            expected = (f"database-tunnel busy listen tcp://127.0.0.1:{port}: "
                        "address already in use")
            wait_until(lambda: expected in str(bot.readyz().get("services", {})
                                               .get("busy", {})), 60, "the tunnel's status")
            assert expected in bot.log_text()
            assert "Errno 98" not in bot.log_text()
        finally:
            bot.stop()
