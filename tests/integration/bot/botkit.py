"""Drives `mwibot` as a real process against a real `mwiproxy start` cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mwiproxy.bot.state import BotStateStore
from mwiproxy.config.bot import DirectoryDestinationConfig
from mwiproxy.devkit.processes import terminate
from tests._testbase.cluster import ClusterProcess
from tests._testbase.fixtures import GUIDE_ROLE
from tests._testbase.ports import free_port

CLUSTER_YAML = """version: v1
cluster_name: mwiproxy.local
data_dir: {data_dir}
proxy:
  listen_addr: 127.0.0.1:{port}
databases:
  - name: example-server
    protocol: postgres
    uri: {db_uri}
    static_labels: {{{{env: dev}}}}
"""

ROLE = GUIDE_ROLE
REPO = Path(__file__).resolve().parents[3]


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll until predicate() is truthy; its value, or AssertionError at the deadline.

    The deadline only bounds a hang: it is never under 60 s, so a loaded 2-core machine
    does not fail a wait that a quiet one passes (a met condition returns at once)."""
    deadline = time.monotonic() + max(timeout, 60.0)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def mwibot(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mwiproxy.cli.mwibot", *args],
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class BotEnv:
    """A cluster with the guide's role and a bot `example`, and a scratch directory."""

    cluster: ClusterProcess
    root: Path
    pin: str = ""
    tokens: list[str] = field(default_factory=list)

    def new_token(self) -> str:
        out = self.cluster.ctl("tokens", "add", "--bot-name", "example", "--format", "json")
        token = str(json.loads(out.stdout)["token"])
        self.tokens.append(token)
        return token

    def config(self, services: list[dict[str, Any]], *, name: str = "tbot.yaml",
               storage: str = "storage", **top: Any) -> Path:
        doc: dict[str, Any] = {
            "version": "v2", "proxy_server": self.cluster.addr,
            "onboarding": {"join_method": "token", "token": self.tokens[-1],
                           "ca_pins": [self.pin]},
            "storage": {"type": "directory", "path": str(self.root / storage)},
            "services": services, **top,
        }
        path = self.root / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def db_service(self, dest: str, fmt: str = "", **extra: Any) -> dict[str, Any]:
        return {"type": "database", "name": dest, "destination": str(self.root / dest),
                "service": "example-server", "database": "example-db", "username": "alice",
                "format": fmt, **extra}

    def generation(self, storage: str = "storage") -> int:
        ident = BotStateStore(DirectoryDestinationConfig(str(self.root / storage))).load()
        assert ident is not None
        return ident.generation

    def cluster_generation(self, bot: str = "example") -> int:
        """The generation the cluster has on record for the bot."""
        bots = json.loads(self.cluster.ctl("get", "bots", "--format", "json").stdout)
        return int(next(b["generation"] for b in bots if b["name"] == bot))

    def locks(self) -> list[dict[str, Any]]:
        return list(json.loads(self.cluster.ctl("locks", "ls", "--format", "json").stdout))

    def audit(self, event_type: str) -> list[dict[str, Any]]:
        out = self.cluster.ctl("audit", "--type", event_type, "--format", "json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


class BotProcess:
    """`mwibot start -c FILE` running in the background, with its log and diagnostics."""

    def __init__(self, config: Path, diag_port: int | None = None,
                 faults: dict[str, str] | None = None) -> None:
        self.config = config
        self.diag_port = diag_port
        self.faults = faults  # MWIBOT_TEST_* settings: run tests/.../faultybot.py instead
        self.log = config.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BotProcess:
        module, env = "mwiproxy.cli.mwibot", None
        if self.faults is not None:
            module = "tests.integration.bot.faultybot"
            path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
            env = {**os.environ, **self.faults, "PYTHONPATH": path}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "start", "-c", str(self.config)],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env)
        return self

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        code = terminate(self.proc)
        self.proc = None
        return code

    def get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.diag_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def readyz(self, service: str = "") -> dict[str, Any]:
        status, body = self.get(f"/readyz/{service}" if service else "/readyz")
        return json.loads(body) if status else {}


def start_env(root: Path, db_uri: str = "localhost:5432") -> BotEnv:
    root.mkdir(parents=True, exist_ok=True)
    config = CLUSTER_YAML.format(data_dir="{data_dir}", port="{port}", db_uri=db_uri)
    cluster = ClusterProcess(root / "data", config).start()
    role = root / "role.yaml"
    role.write_text(ROLE)
    cluster.ctl("create", "-f", str(role))
    cluster.ctl("bots", "add", "example", "--roles", "example-role")
    status = cluster.ctl("status").stdout
    pin = next(ln.split()[-1] for ln in status.splitlines() if ln.startswith("CA pin"))
    env = BotEnv(cluster, root, pin)
    env.new_token()
    return env


def diag_port() -> int:
    return free_port()


def file_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777
