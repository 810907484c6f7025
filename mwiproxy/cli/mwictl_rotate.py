"""`mwictl auth rotate`: CA rotation (auth/ca_rotation.py), and what `mwictl status`
shows of it."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # mwictl.py imports this module for its parser: keep --help fast
    from mwiproxy.auth.client import AuthClient

CA_TYPES = ["host", "user", "db", "db_client", "agent"]
PHASES = ["init", "update_clients", "update_servers", "standby", "rollback"]


def add_parser(auth: Any) -> None:
    """The `rotate` subcommand under `mwictl auth`."""
    rot = auth.add_parser(
        "rotate", help="rotate a certificate authority (Teleport's phases)",
        description="Without --manual: walk init, update_clients, update_servers and "
                    "standby, a third of the grace period apart. With --manual: move to "
                    "--phase now (rollback from init, update_clients or update_servers).")
    rot.add_argument("--type", required=True, choices=CA_TYPES, help="which CA")
    rot.add_argument("--grace-period", default="30h",
                     help="how long both CAs are trusted in an automatic rotation (30h)")
    rot.add_argument("--manual", action="store_true", help="move one phase: needs --phase")
    rot.add_argument("--phase", choices=PHASES, help="with --manual: the phase to enter")


def cmd_rotate(c: AuthClient, a: argparse.Namespace) -> int:
    if a.phase and not a.manual:
        raise ValueError("--phase needs --manual (an automatic rotation walks every phase)")
    res = c.call("rotate_ca", type=a.type, manual=a.manual, phase=a.phase or "",
                 grace_period=a.grace_period)
    entry = res[a.type]
    print(f"The {a.type} CA is now in phase {entry['phase']}"
          f"{' (automatic)' if entry.get('mode') == 'auto' else ''}.")
    for line in describe(a.type, entry):
        print(line)
    return 0


def describe(kind: str, entry: dict[str, Any]) -> list[str]:
    """Lines about one CA's rotation: phase, the next automatic step, pins."""
    lines = []
    if entry.get("mode") == "auto" and entry.get("schedule"):
        upcoming = [(when, phase) for phase, when in entry["schedule"].items()]
        upcoming.sort()
        steps = ", ".join(f"{phase} at {_when(when)}" for when, phase in upcoming)
        lines.append(f"  schedule (grace period {entry.get('grace_period', '')}): {steps}")
    lines.append(f"  signing CA:  {entry['active']}")
    lines.append(f"  trusted CAs: {', '.join(entry['trusted'])}")
    return lines


def status_lines(c: AuthClient) -> list[str]:
    """`mwictl status`: one line per CA that is rotating (nothing when none is)."""
    out = []
    for kind, entry in c.call("rotation_status").items():
        if entry["phase"] != "standby":
            mode = entry.get("mode") or "manual"
            out.append(f"Rotation   {kind} CA: {entry['phase']} ({mode})")
    return out


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(float(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
