"""On-renew actions (mwibot extension `reload:`): tell a consumer its files changed.

Many programs read certificates once at start and reload them on a signal (PgBouncer,
nginx: SIGHUP). An action runs after the new bundle is published; its failure is
logged and reported, and never undoes the renewal: the files on disk are good either
way.

Commands run without a shell, with the output's directory and service name in the
environment (`MWIBOT_DESTINATION`, `MWIBOT_SERVICE`), and a timeout.
"""

from __future__ import annotations

import logging
import os
import subprocess

from mwiproxy.config.bot import ReloadAction

log = logging.getLogger("mwiproxy.bot")


class ActionError(Exception):
    pass


def run_reload(action: ReloadAction, *, service: str, destination: str) -> None:
    """Run one action (blocking); ActionError says what went wrong."""
    if action.pid_file:
        _signal_pid_file(action)
    else:
        _run_command(action, service, destination)


def _signal_pid_file(action: ReloadAction) -> None:
    try:
        with open(action.pid_file, encoding="ascii") as f:
            text = f.read().strip()
    except OSError as e:
        raise ActionError(f"reload: cannot read pid file {action.pid_file}: {e.strerror}") from None
    if not text.isdigit() or int(text) <= 1:
        raise ActionError(f"reload: pid file {action.pid_file} holds no usable pid ({text!r})")
    try:
        os.kill(int(text), action.signum)
    except OSError as e:
        raise ActionError(
            f"reload: cannot send {action.signum.name} to pid {text}: {e.strerror}") from None
    log.info("reload: sent %s to pid %s (%s)", action.signum.name, text, action.pid_file)


def _run_command(action: ReloadAction, service: str, destination: str) -> None:
    env = dict(os.environ, MWIBOT_SERVICE=service, MWIBOT_DESTINATION=destination)
    timeout = action.timeout.total_seconds()
    try:
        res = subprocess.run(action.command, env=env, capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ActionError(f"reload: command not found: {action.command[0]}") from None
    except subprocess.TimeoutExpired:
        raise ActionError(f"reload: {action.command[0]} did not finish in {timeout:g}s") from None
    except OSError as e:
        raise ActionError(f"reload: cannot run {action.command[0]}: {e.strerror}") from None
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [""]
        raise ActionError(f"reload: {action.command[0]} exited {res.returncode}: {detail[0]}")
    log.info("reload: ran %s", " ".join(action.command))
