"""Process plumbing: sd_notify datagrams, the pid file, the data dir lock, and the main
loop driven by real signals sent to this process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from mwiproxy.process.lifecycle import Signals, serve
from mwiproxy.process.pidfile import LOCK_FILE, DataDirLock, InUse, PidFile
from mwiproxy.process.sdnotify import Notifier


def _listen(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def _fields(sock: socket.socket) -> dict[str, str]:
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


def test_notify_to_a_path_socket(tmp_path: Path):
    with _listen(str(tmp_path / "notify")) as sock:
        n = Notifier(str(tmp_path / "notify"))
        assert n.ready("serving\non port 1")
        got = _fields(sock)
        assert got["READY"] == "1" and got["MAINPID"] == str(os.getpid())
        assert got["STATUS"] == "serving on port 1"  # one line: a newline would end it
        n.reloading()
        got = _fields(sock)
        assert got["RELOADING"] == "1" and int(got["MONOTONIC_USEC"]) > 0
        n.stopping("draining")
        assert _fields(sock) == {"STOPPING": "1", "STATUS": "draining"}


def test_notify_to_the_abstract_namespace():
    name = f"mwiproxy-test-{os.getpid()}"
    with _listen("\0" + name) as sock:
        assert Notifier("@" + name).status("hello")
        assert _fields(sock) == {"STATUS": "hello"}


def test_notify_without_a_socket_sends_nothing_and_a_dead_socket_is_no_error(tmp_path):
    assert not Notifier("").ready("x")
    assert not Notifier(str(tmp_path / "gone")).ready("x")  # logged, not raised


def test_from_env_takes_the_socket_out_of_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n"))
    assert Notifier.from_env().enabled
    assert "NOTIFY_SOCKET" not in os.environ  # children we start cannot speak for us


def test_pid_file_refuses_a_live_process_and_replaces_a_stale_one(tmp_path: Path):
    path = tmp_path / "x.pid"
    other = subprocess.Popen(["sleep", "30"])
    try:
        path.write_text(f"{other.pid}\n")
        with pytest.raises(InUse, match=f"names process {other.pid}, which is running"):
            PidFile(path).write()
    finally:
        other.kill()
        other.wait()
    pid = PidFile(path)
    pid.write()  # the process it named is gone: stale
    assert path.read_text() == f"{os.getpid()}\n"
    pid.remove()
    assert not path.exists()


def test_pid_file_is_left_alone_when_another_process_wrote_it_since(tmp_path: Path):
    path = tmp_path / "x.pid"
    pid = PidFile(path)
    pid.write()
    path.write_text("1\n")
    pid.remove()
    assert path.read_text() == "1\n"


def test_data_dir_lock_names_its_holder_and_is_free_once_released(tmp_path: Path):
    first = DataDirLock(tmp_path)
    first.acquire()
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    with pytest.raises(InUse, match=f"in use by process {os.getpid()}"):
        DataDirLock(tmp_path).acquire()  # another open file: flock tells them apart
    first.release()
    second = DataDirLock(tmp_path)
    second.acquire()
    second.release()


class FakeService:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_reload = False

    def status(self) -> str:
        return f"{len(self.calls)} calls"

    async def reload(self) -> None:
        self.calls.append("reload")
        if self.fail_reload:
            raise ValueError("cluster.yaml:3: bogus: unknown field")

    async def drain(self, timeout: float) -> None:
        self.calls.append(f"drain {timeout:g}")

    async def close(self) -> None:
        self.calls.append("close")


def test_the_main_loop_reloads_on_hup_survives_a_bad_reload_and_drains_on_term(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    service, pid_path = FakeService(), tmp_path / "svc.pid"
    notes: list[dict[str, str]] = []

    async def main() -> None:
        signals = Signals()
        sock = _listen(str(tmp_path / "notify"))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()

        async def note() -> dict[str, str]:
            got = dict(line.split("=", 1) for line in
                       (await loop.sock_recv(sock, 4096)).decode().splitlines())
            notes.append(got)
            return got

        task = asyncio.ensure_future(serve(
            service, signals, reload=service.reload, drain_timeout=lambda: 7,
            pid_file=PidFile(pid_path), notifier=Notifier(str(tmp_path / "notify"))))
        assert "READY" in await note()
        assert pid_path.read_text() == f"{os.getpid()}\n"
        os.kill(os.getpid(), signal.SIGHUP)
        assert "RELOADING" in await note() and "READY" in await note()
        service.fail_reload = True
        os.kill(os.getpid(), signal.SIGHUP)
        assert "RELOADING" in await note() and "READY" in await note()
        os.kill(os.getpid(), signal.SIGTERM)
        assert "STOPPING" in await note()
        await task
        sock.close()

    asyncio.run(main())
    assert service.calls == ["reload", "reload", "drain 7", "close"]
    assert "not reloaded, the running configuration stays: cluster.yaml:3: bogus" in caplog.text
    assert not pid_path.exists()
    assert notes[-1]["STATUS"] == "draining: open sessions have 7s to finish"
