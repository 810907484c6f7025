"""Stopping a child process the way a service manager does: SIGTERM, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess


def terminate(proc: subprocess.Popen[bytes] | subprocess.Popen[str], grace: float = 10.0
              ) -> int:
    """SIGTERM `proc` if it still runs, SIGKILL it after `grace` seconds; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
