"""Runs `mwiproxy start` as a real process and drives it with `mwictl`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mwiproxy.devkit.ports import free_port
from mwiproxy.devkit.processes import terminate


class ClusterProcess:
    def __init__(self, data_dir: Path, config: str | None = None) -> None:
        self.data_dir = data_dir
        self.config_path: Path | None = None
        self.port = free_port()
        if config is not None:
            self.config_path = data_dir.parent / f"{data_dir.name}-cluster.yaml"
            self.config_path.write_text(config.format(data_dir=data_dir, port=self.port))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"{data_dir.name}-mwiproxy.log"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ClusterProcess:
        cmd = [sys.executable, "-m", "mwiproxy.cli.mwiproxy", "start"]
        if self.config_path is not None:
            cmd += ["-c", str(self.config_path)]
        else:
            cmd += ["--data-dir", str(self.data_dir), "--listen-addr", self.addr]
        info = self.data_dir / "cluster.json"
        if info.exists():
            info.unlink()
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mwiproxy exited {self.proc.returncode}:\n{self.log.read_text()}")
            if info.exists():
                try:
                    if json.loads(info.read_text())["pid"] == self.proc.pid:
                        return self
                except (ValueError, KeyError):
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"mwiproxy did not become ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
        self.proc = None

    def ctl(self, *args: str, check: bool = True, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, MWIPROXY_DATA_DIR=str(self.data_dir))
        res = subprocess.run([sys.executable, "-m", "mwiproxy.cli.mwictl", *args], env=env,
                             capture_output=True, text=True, input=input, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"mwictl {' '.join(args)} failed ({res.returncode}):\n"
                                 f"{res.stdout}\n{res.stderr}")
        return res
