"""The unit files in deploy/systemd, run the way systemd runs them: each unit's
ExecStart (binaries and paths mapped into a temp dir) with a NOTIFY_SOCKET we listen
on, its ExecReload for `systemctl reload`, its KillSignal for `systemctl stop`."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests._testbase.ports import free_port
from tests.e2e.conftest import LocalProxyProcess, Topology, wait_for

pytestmark = pytest.mark.integration

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
BIN = "/usr/local/bin/"


def read_unit(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser["Service"]


class Unit:
    """One unit's service, started from its own command line."""

    def __init__(self, name: str, root: Path, subs: dict[str, str]) -> None:
        self.service = read_unit(name)
        self.root = root
        run = root / "run"
        self.subs = {"/run/": f"{run}/", **subs}
        (run / self.service["RuntimeDirectory"]).mkdir(parents=True)  # as systemd does
        self.pid_file = Path(self._map(self.service["PIDFile"]))
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(root / "notify.sock"))
        self.notify.settimeout(60)
        self.log = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _map(self, text: str) -> str:
        for old, new in self.subs.items():
            text = text.replace(old, new)
        return text

    def argv(self) -> list[str]:
        argv = [self._map(a) for a in shlex.split(self.service["ExecStart"])]
        assert argv[0].startswith(BIN)
        return [sys.executable, "-m", f"mwiproxy.cli.{argv[0][len(BIN):]}", *argv[1:]]

    def start(self) -> int:
        env = dict(os.environ, NOTIFY_SOCKET=str(self.root / "notify.sock"))
        for assignment in shlex.split(self.service.get("Environment", "")):
            key, _, value = assignment.partition("=")
            env[key] = self._map(value)
        self.proc = subprocess.Popen(self.argv(), env=env, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT)
        return self.proc.pid

    def expect(self, key: str) -> dict[str, str]:
        """The next notification; it must carry `key`."""
        try:
            data = self.notify.recv(4096).decode()
        except TimeoutError:
            raise AssertionError(f"no {key} notification:\n{self.log.read_text()}") from None
        fields = dict(line.split("=", 1) for line in data.splitlines())
        assert key in fields, fields
        return fields

    def reload(self) -> None:
        """ExecReload, as systemd runs it."""
        assert self.proc is not None
        cmd = shlex.split(self.service["ExecReload"].replace("$MAINPID", str(self.proc.pid)))
        subprocess.run(cmd, check=True)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(getattr(signal, self.service.get("KillSignal", "SIGTERM")))
        return self.proc.wait(float(self.service["TimeoutStopSec"]))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()

    def check_lifecycle_start(self) -> None:
        ready = self.expect("READY")
        assert self.proc is not None and ready["MAINPID"] == str(self.proc.pid)
        assert self.pid_file.read_text() == f"{self.proc.pid}\n"  # there by READY=1

    def check_reload(self) -> None:
        self.reload()
        assert int(self.expect("RELOADING")["MONOTONIC_USEC"]) > 0
        self.expect("READY")
        assert self.proc is not None and self.proc.poll() is None

    def check_stop(self) -> None:
        assert self.stop() == 0
        self.expect("STOPPING")
        assert not self.pid_file.exists()


def test_units_are_well_formed_for_systemd(tmp_path: Path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text().replace(BIN, str(tmp_path / "bin") + "/")
        (tmp_path / unit.name).write_text(text)
        for name in ("mwiproxy", "mwibot"):
            (tmp_path / "bin").mkdir(exist_ok=True)
            shutil.copy("/bin/true", tmp_path / "bin" / name)
        res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit.name)],
                             capture_output=True, text=True)
        assert res.returncode == 0 and unit.name not in res.stderr, res.stderr
        service = read_unit(unit.name)
        assert service["Type"] == "notify"
        assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
        assert service["PIDFile"] in service["ExecStart"]  # --pid-file= writes it


def test_cluster_unit(tmp_path: Path):
    data, port = tmp_path / "data", free_port()
    config = tmp_path / "cluster.yaml"
    config.write_text(f"version: v1\ncluster_name: unit.local\ndata_dir: {data}\n"
                      f"proxy: {{listen_addr: '127.0.0.1:{port}', drain_timeout: 3s}}\n")
    unit = Unit("mwiproxy.service", tmp_path, {"/etc/mwiproxy/cluster.yaml": str(config),
                                               "/var/lib/mwiproxy": str(data)})
    try:
        unit.start()
        unit.check_lifecycle_start()
        unit.check_reload()
        env = dict(os.environ, MWIPROXY_DATA_DIR=str(data))
        status = subprocess.run([sys.executable, "-m", "mwiproxy.cli.mwictl", "status"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "unit.local" in status.stdout, status.stderr
        unit.check_stop()
    finally:
        unit.kill()


def test_bot_unit(topo: Topology, tmp_path: Path):
    out = tmp_path / "out"
    tbot = tmp_path / "tbot.yaml"
    tbot.write_text(yaml.safe_dump({
        "version": "v2", "proxy_server": topo.cluster.addr, "credential_ttl": "10s",
        "renewal_interval": "2s",
        "onboarding": {"join_method": "token", "token": topo.add_bot("unit-bot"),
                       "ca_pins": [topo.ca_pin]},
        "storage": {"type": "directory", "path": str(tmp_path / "storage")},
        "services": [{"type": "database", "destination": str(out),
                      "service": "example-server", "database": "example-db",
                      "username": "alice"}]}))
    unit = Unit("mwibot.service", tmp_path, {"/etc/tbot.yaml": str(tbot)})

    def serial() -> int:
        try:
            return x509.load_pem_x509_certificate(
                (out / "tlscert").read_bytes()).serial_number
        except (OSError, ValueError):
            return 0
    try:
        unit.start()
        unit.check_lifecycle_start()
        assert wait_for(serial, 20), unit.log.read_text()
        unit.check_reload()
        before = serial()
        assert wait_for(lambda: serial() not in (0, before), 20), "renewing after reload"
        unit.check_stop()
    finally:
        unit.kill()


def test_db_proxy_unit_from_the_guide(topo: Topology, tmp_path: Path):
    out, port = topo.bot_output("unit-proxy"), free_port()
    tbot = tmp_path / "tbot.yaml"
    tbot.write_text(json.dumps({"version": "v2", "proxy_server": topo.cluster.addr}))
    unit = Unit("mwibot-db-proxy.service", tmp_path, {
        "/etc/tbot.yaml": str(tbot), "proxy.example.com:3080": topo.cluster.addr,
        "/opt/machine-id": str(out), "--port=12345": f"--port={port}"})
    try:
        pid = unit.start()
        unit.check_lifecycle_start()
        assert unit.proc is not None
        lp = LocalProxyProcess(unit.proc, port, unit.log)  # type: ignore[arg-type]
        res = topo.psql(topo.dsn(lp, out), "select 1")
        assert res.returncode == 0 and res.stdout.strip() == "1", res.stderr
        unit.check_reload()
        assert "credentials re-read" in unit.log.read_text()
        res = topo.psql(topo.dsn(lp, out), "select 2")  # still serving after the reload
        assert res.returncode == 0 and res.stdout.strip() == "2", res.stderr
        unit.check_stop()
        assert unit.proc.pid == pid
    finally:
        unit.kill()
