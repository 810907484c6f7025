"""`mwictl users add/ls/rm`: the web UI's human users (auth/users.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import time
from typing import Any

from mwiproxy.auth.client import AuthClient
from mwiproxy.cli import mwictl_output as out
from mwiproxy.cli.common import table


def add_parser(sub: Any) -> None:
    users = sub.add_parser("users", help="web UI users").add_subparsers(
        dest="sub", required=True, metavar="COMMAND")
    ua = users.add_parser("add", help="add a user and print a one-time invite link")
    ua.add_argument("name", help="the user's name")
    ua.add_argument("--roles", default="", help="comma-separated roles (their `rules` "
                    "say what the user may see and do)")
    ua.add_argument("--ttl", default="1h", help="how long the invite is valid (default 1h)")
    out.add_format(ua)
    out.add_format(users.add_parser("ls", help="list users"))
    urm = users.add_parser("rm", help="remove a user (their sessions end)")
    urm.add_argument("name", help="the user's name")


def cmd_users(c: AuthClient, a: argparse.Namespace) -> int:
    if a.sub == "add":
        roles = [x.strip() for x in a.roles.split(",") if x.strip()]
        res = c.call("users_add", name=a.name, roles=roles, ttl=a.ttl)
        if a.format != "text":
            out.dump(res, a.format)
            return 0
        mins = int(round((res["expires"] - time.time()) / 60))
        print(f'User "{a.name}" has been created but requires a password and a second '
              f"factor. Share this link with the user; it works once and expires in "
              f"{mins} minutes:\n\n{res['url']}")
    elif a.sub == "ls":
        users = c.call("users_ls")
        if a.format != "text":
            out.dump(users, a.format)
        else:
            print(table(["User", "Roles", "State", "Created"],
                        [(u["name"], ",".join(u["roles"]), u["state"],
                          dt.datetime.fromtimestamp(u["created"], dt.UTC)
                          .strftime("%Y-%m-%dT%H:%M:%SZ")) for u in users]))
    elif a.sub == "rm":
        c.call("users_rm", name=a.name)
        print(f'User "{a.name}" has been deleted')
    return 0
