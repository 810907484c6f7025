"""`mwiproxy start` as a process: one cluster per data dir, the pid file, and SIGHUP
reloads that fail or ask for a restart without taking the cluster down."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests._testbase.cluster import ClusterProcess
from tests._testbase.ports import free_port
from tests.integration.bot.botkit import wait_until

pytestmark = pytest.mark.integration

CLUSTER_YAML = """\
version: v1
cluster_name: mwiproxy.local
data_dir: {data_dir}
proxy:
  listen_addr: 127.0.0.1:{port}
  drain_timeout: 3s
"""


def start(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mwiproxy.cli.mwiproxy", "start", *args],
                          capture_output=True, text=True, timeout=60)


def test_a_second_cluster_on_the_same_data_dir_is_refused_and_names_the_first(cluster):
    info = cluster.data_dir / "cluster.json"
    before = (info.read_bytes(), info.stat().st_mtime_ns)
    res = start("--data-dir", str(cluster.data_dir), "--listen-addr",
                f"127.0.0.1:{free_port()}")
    assert res.returncode == 1
    assert f"data dir {cluster.data_dir} is in use by process {cluster.proc.pid}" in res.stderr
    assert "Traceback" not in res.stderr
    assert (info.read_bytes(), info.stat().st_mtime_ns) == before
    assert cluster.ctl("status").returncode == 0  # mwictl still finds the first one


def test_the_lock_goes_with_the_process(tmp_path: Path):
    c = ClusterProcess(tmp_path / "data").start()
    c.proc.kill()  # no clean shutdown: the kernel drops the flock
    c.proc.wait()
    c.proc = None
    c.start()
    try:
        assert c.ctl("status").returncode == 0
    finally:
        c.stop()


def test_pid_file_written_when_serving_removed_on_exit_and_a_live_one_refuses(
        tmp_path: Path):
    pid_file = tmp_path / "mwiproxy.pid"
    c = ClusterProcess(tmp_path / "data", config=CLUSTER_YAML)
    assert c.config_path is not None
    proc = subprocess.Popen([sys.executable, "-m", "mwiproxy.cli.mwiproxy", "start", "-c",
                             str(c.config_path), f"--pid-file={pid_file}"],
                            stdout=subprocess.PIPE, stderr=open(c.log, "ab"), text=True)
    try:
        assert "ready on" in (proc.stdout.readline() if proc.stdout else "")
        assert pid_file.read_text() == f"{proc.pid}\n"
        other = start("--data-dir", str(tmp_path / "other"), "--listen-addr",
                      f"127.0.0.1:{free_port()}", f"--pid-file={pid_file}")
        assert other.returncode == 1
        assert f"pid file {pid_file} names process {proc.pid}, which is running" in other.stderr
        assert not (tmp_path / "other").exists()  # refused before anything was written
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not pid_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sighup_with_a_broken_file_keeps_the_running_config_and_names_file_and_line(
        tmp_path: Path):
    c = ClusterProcess(tmp_path / "data", config=CLUSTER_YAML).start()
    assert c.config_path is not None and c.proc is not None
    good = c.config_path.read_text()
    try:
        c.config_path.write_text(good + "  ping_intervall: 5s\n")
        c.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "not reloaded" in c.log.read_text(), 10, "the failed reload")
        assert f"{c.config_path}:7: proxy.ping_intervall: unknown field" in c.log.read_text()
        assert c.ctl("status").returncode == 0
        moved = good.replace(f"127.0.0.1:{c.port}", f"127.0.0.1:{free_port()}")
        c.config_path.write_text(moved.replace("drain_timeout: 3s", "drain_timeout: 1s"))
        c.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "cluster.yaml reloaded" in c.log.read_text(), 10, "the reload")
        log = c.log.read_text()
        assert "proxy.listen_addr changed" in log and "needs a restart" in log
        assert "changed: proxy.drain_timeout" in log
        info = json.loads((c.data_dir / "cluster.json").read_text())
        assert info["proxy_addr"] == c.addr  # still where it was
        assert c.ctl("status").returncode == 0
        c.proc.send_signal(signal.SIGTERM)
        assert c.proc.wait(30) == 0
        assert "open sessions have up to 1s" in c.log.read_text()  # the reloaded value
    finally:
        c.stop()
