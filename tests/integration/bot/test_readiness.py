"""/readyz tells the truth (a real cluster, a real `mwibot start`): ready as soon as
valid credentials are written, through every SIGHUP reload and restart, while the
cluster is away and they are still valid; not ready once they expire, or while a
database-tunnel's listener is not accepting; /livez answers throughout."""

from __future__ import annotations

import signal
import socket
import threading
import time
from typing import Any

import pytest

from tests.integration.bot.botkit import BotEnv, BotProcess, diag_port, wait_until

pytestmark = pytest.mark.integration

SLOW = {"credential_ttl": "1h", "renewal_interval": "20m"}  # the defaults' shape


def start_bot(env: BotEnv, services: list[dict[str, Any]], **top: str) -> BotProcess:
    port = diag_port()
    config = env.config(services, diag_addr=f"127.0.0.1:{port}", **top)
    return BotProcess(config, port).start()


class Poller:
    """Polls /readyz and /livez in the background and keeps every answer's code."""

    def __init__(self, bot: BotProcess) -> None:
        self.bot = bot
        self.codes: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.codes.append((self.bot.get("/readyz")[0], self.bot.get("/livez")[0]))
            time.sleep(0.02)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_ready_once_written_and_through_reloads_and_restarts(env: BotEnv):
    out = env.root / "out"
    bot = start_bot(env, [env.db_service("out"),
                          {"type": "identity", "name": "me", "destination": str(env.root / "me")}],
                    **SLOW)
    try:
        wait_until(lambda: (out / "tlscert").exists() and (env.root / "me" / "identity").exists(),
                   15, "the first outputs")
        # not after a renewal interval (20 minutes): right after the files are written
        doc = wait_until(lambda: bot.get("/readyz")[0] == 200 and bot.readyz(), 3, "ready")
        assert doc["status"] == "healthy", doc
        with Poller(bot) as poll:
            for n in (1, 2):
                bot.signal(signal.SIGHUP)
                wait_until(lambda n=n: bot.log_text().count("configuration reloaded") >= n, 10)
                wait_until(lambda n=n: len(poll.codes) >= 10 * n, 5)
        assert poll.codes and set(poll.codes) == {(200, 200)}, poll.codes
        assert len(env.audit("bot.join")) == 1
    finally:
        assert bot.stop() == 0

    # a restart with the cluster away: the stored identity and the files on disk serve
    env.cluster.stop()
    bot = BotProcess(bot.config, bot.diag_port).start()
    try:
        doc = wait_until(lambda: bot.get("/readyz")[0] == 200 and bot.readyz(), 10, "ready")
        assert doc["services"]["out"]["ready"] and doc["services"]["bot-identity"]["ready"]
        wait_until(lambda: "cannot reach the cluster" in bot.log_text(), 10)
        assert bot.get("/readyz")[0] == 200 and bot.get("/readyz/out")[0] == 503
    finally:
        assert bot.stop() == 0
        env.cluster.start()


def test_expired_credentials_are_not_ready_and_say_why(env: BotEnv):
    bot = start_bot(env, [env.db_service("out")], credential_ttl="6s", renewal_interval="2s")
    try:
        wait_until(lambda: bot.get("/readyz")[0] == 200, 15, "ready")
        env.cluster.stop()
        with Poller(bot) as poll:
            doc = wait_until(lambda: bot.get("/readyz")[0] == 503 and bot.readyz(), 15,
                             "503 once the credentials expire")
        assert "expired" in doc["reason"] and not doc["services"]["out"]["ready"], doc
        assert {live for _, live in poll.codes} == {200}
        assert (200, 200) in poll.codes  # ready while they were still valid
    finally:
        assert bot.stop() == 0
        env.cluster.start()


def test_a_tunnel_not_listening_is_not_ready(env: BotEnv):
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    tunnel = {"type": "database-tunnel", "name": "tun", "listen": f"tcp://127.0.0.1:{port}",
              "service": "example-server", "database": "example-db", "username": "alice"}
    bot = start_bot(env, [tunnel], **SLOW)
    try:
        doc = wait_until(lambda: "failed" in bot.readyz().get("reason", "") and bot.readyz(),
                         15, "the listener failure on /readyz")
        assert bot.get("/readyz")[0] == 503 and "tun: not listening" in doc["reason"]
        assert bot.get("/livez")[0] == 200
        taken.close()
        bot.signal(signal.SIGHUP)  # the port is free now
        wait_until(lambda: bot.get("/readyz")[0] == 200, 15, "ready once listening")
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        taken.close()
        assert bot.stop() == 0
