"""mwictl's machine output (`--format json|yaml` on every read), the printed join
command pasted as is, JSON process logs, and bind errors that name their setting —
against a real `mwiproxy start`."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mwiproxy.devkit.processes import terminate
from tests._testbase.cluster import ClusterProcess
from tests._testbase.fixtures import GUIDE_ROLE as ROLE

pytestmark = pytest.mark.integration

WIDE = 60.0


def is_rfc3339(value: object) -> bool:
    return isinstance(value, str) and value.endswith("Z") and bool(
        dt.datetime.fromisoformat(value.replace("Z", "+00:00")))


def both(cluster: ClusterProcess, *args: str) -> tuple[object, object]:
    """The same read as JSON and as YAML: they must say the same thing."""
    as_json = json.loads(cluster.ctl(*args, "--format", "json").stdout)
    as_yaml = yaml.safe_load(cluster.ctl(*args, "--format", "yaml").stdout)
    assert as_json == as_yaml, args
    return as_json, as_yaml


def test_every_read_in_json_and_yaml(cluster, tmp_path):
    (tmp_path / "role.yaml").write_text(ROLE)
    cluster.ctl("create", "-f", str(tmp_path / "role.yaml"))
    cluster.ctl("bots", "add", "b1", "--roles=example-role")
    cluster.ctl("lock", "--user", "someone", "--ttl", "1h", "--message", "why")

    status, _ = both(cluster, "status")
    assert isinstance(status, dict) and status["cluster_name"] == "mwiproxy.local"
    assert status["host_ca_pin"].startswith("sha256:") and status["bots"] == 1
    assert set(status["rotation"]) >= {"host", "user"}

    bots, _ = both(cluster, "bots", "ls")
    assert isinstance(bots, list) and bots[0]["name"] == "b1"
    assert bots[0]["roles"] == ["example-role"] and is_rfc3339(bots[0]["created"])
    assert bots[0]["last_seen"] is None  # never seen: null, not 0

    tokens, _ = both(cluster, "tokens", "ls")
    assert isinstance(tokens, list) and is_rfc3339(tokens[0]["expires"])

    locks, _ = both(cluster, "locks", "ls")
    assert isinstance(locks, list) and locks[0]["target"] == "someone"
    assert is_rfc3339(locks[0]["expires"]) and is_rfc3339(locks[0]["created"])

    dbs, _ = both(cluster, "db", "ls")
    agents, _ = both(cluster, "agents", "ls")
    assert dbs == [] and agents == []
    # `get`: YAML is one document per resource (what `create -f` reads back)
    assert json.loads(cluster.ctl("get", "bots", "--format", "json").stdout) == bots
    assert list(yaml.safe_load_all(cluster.ctl("get", "bots").stdout)) == bots

    lines = cluster.ctl("audit", "--format", "json").stdout.splitlines()
    events = [json.loads(ln) for ln in lines]
    assert events == yaml.safe_load(cluster.ctl("audit", "--format", "yaml").stdout)
    created = next(e for e in events if e["type"] == "bot.create")
    assert is_rfc3339(created["time"]) and created["roles"] == ["example-role"]


def test_audit_text_is_rfc3339_with_plain_lists(cluster, tmp_path):
    for name in ("r1", "r2"):
        (tmp_path / f"{name}.yaml").write_text(ROLE.replace("example-role", name))
        cluster.ctl("create", "-f", str(tmp_path / f"{name}.yaml"))
    cluster.ctl("bots", "add", "b2", "--roles=r1,r2")
    line = next(ln for ln in cluster.ctl("audit", "--type", "bot.create").stdout.splitlines())
    stamp = line.split()[0]
    assert is_rfc3339(stamp), line
    assert "roles=r1,r2" in line and "[" not in line, line


def test_the_printed_join_command_works_pasted(cluster, tmp_path):
    out = cluster.ctl("bots", "add", "pasted").stdout
    (command,) = [ln[2:] for ln in out.splitlines() if ln.startswith("> ")]
    argv = shlex.split(command)
    assert argv[0] == "mwibot" and any(a.startswith("--ca-pin=sha256:") for a in argv)
    # run exactly what was printed (this tree's mwibot), from a fresh directory
    bot_log = tmp_path / "mwibot.log"
    with open(bot_log, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mwiproxy.cli.mwibot", *argv[1:]],
                                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONPATH=os.getcwd()))
    identity = tmp_path / "mwibot-id" / "identity"
    try:
        deadline = time.monotonic() + WIDE
        while not identity.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert identity.exists(), f"exit {proc.poll()}: {bot_log.read_text()}"
    finally:
        terminate(proc)
    bots = json.loads(cluster.ctl("bots", "ls", "--format", "json").stdout)
    assert next(b for b in bots if b["name"] == "pasted")["generation"] >= 1


def _taken_port() -> tuple[socket.socket, str]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, f"127.0.0.1:{s.getsockname()[1]}"


def test_cluster_listen_addr_in_use_names_the_setting(tmp_path):
    taken, addr = _taken_port()
    with taken:
        _fails_with(["mwiproxy.cli.mwiproxy", "start", "--data-dir", str(tmp_path / "data"),
                     "--listen-addr", addr], f"proxy.listen_addr {addr}: address already in use")


def test_cluster_diag_addr_in_use_names_the_setting(tmp_path):
    taken, addr = _taken_port()
    (tmp_path / "cluster.yaml").write_text(
        f"data_dir: {tmp_path / 'data'}\ndiag_addr: {addr}\nproxy:\n  listen_addr: 127.0.0.1:0\n")
    with taken:
        _fails_with(["mwiproxy.cli.mwiproxy", "start", "-c", str(tmp_path / "cluster.yaml")],
                    f"diag_addr {addr}: address already in use")


def _fails_with(cmd: list[str], message: str) -> None:
    r = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True,
                       timeout=WIDE)
    assert r.returncode == 1 and f"ERROR: {message}" in r.stderr, r.stderr


NO_CLUSTER = ["--token=x", "--ca-pin=sha256:" + "0" * 64]


def test_bot_diag_addr_in_use_names_the_setting(tmp_path):
    taken, addr = _taken_port()
    with taken:
        _fails_with(["mwiproxy.cli.mwibot", "start", "identity", "--proxy-server=127.0.0.1:1",
                     *NO_CLUSTER, f"--destination={tmp_path / 'out'}",
                     f"--storage={tmp_path / 'state'}", f"--diag-addr={addr}"],
                    f"diag_addr {addr}: address already in use")


def test_agent_diag_addr_in_use_names_the_setting(tmp_path):
    taken, addr = _taken_port()
    (tmp_path / "db.yaml").write_text(
        f"data_dir: {tmp_path / 'data'}\ndb_service:\n  diag_addr: {addr}\n"
        "databases:\n  - {name: orders, protocol: postgres, uri: localhost:5432}\n")
    with taken:
        _fails_with(["mwiproxy.cli.mwiproxy", "start", "--roles=db", "-c",
                     str(tmp_path / "db.yaml"), "--auth-server=127.0.0.1:1", *NO_CLUSTER],
                    f"db_service.diag_addr {addr}: address already in use")


def _complete_lines(log: Path) -> list[dict[str, object]]:
    """The log's finished lines (it is appended to: the last may be half written); a
    Python warning on stderr is not a log line."""
    return [json.loads(ln) for ln in log.read_text().split("\n")[:-1] if ln.startswith("{")]


def test_json_process_log(tmp_path):
    data = tmp_path / "data"
    cluster = ClusterProcess(data)
    log = Path(cluster.log)
    cmd = [sys.executable, "-m", "mwiproxy.cli.mwiproxy", "start", "--data-dir", str(data),
           "--listen-addr", cluster.addr, "--log-format", "json"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        info = data / "cluster.json"
        deadline = time.monotonic() + WIDE
        while not info.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert info.exists(), log.read_text()
        cluster.ctl("bots", "add", "logged")
        audit: list[dict[str, object]] = []
        while not audit and time.monotonic() < deadline:
            audit = [ln for ln in _complete_lines(log) if ln.get("msg") == "audit"
                     and isinstance(ln.get("event"), dict)
                     and ln["event"].get("type") == "bot.create"]  # type: ignore[union-attr]
            time.sleep(0.1)
    finally:
        terminate(proc)
    lines = _complete_lines(log)  # the process has exited: the whole log
    assert audit, log.read_text()
    assert all(is_rfc3339(ln["time"]) for ln in lines)
    assert any(ln["msg"] == "stopped" for ln in lines)
    assert audit[0]["event"]["bot"] == "logged"  # type: ignore[index]
