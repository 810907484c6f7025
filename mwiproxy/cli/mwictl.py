"""`mwictl`: the cluster admin CLI (tctl's verbs, for mwiproxy)."""

from __future__ import annotations

import argparse
import sys

from mwiproxy.cli.common import add_version, run_cli


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--identity", help="identity file (default: <data dir>/admin/identity)")
    p.add_argument("--auth-server", help="cluster proxy address host:port "
                   "(default: from <data dir>/cluster.json, else 127.0.0.1:3080)")
    p.add_argument("--data-dir", help="the cluster's data dir (default: $MWIPROXY_DATA_DIR or "
                   "the platform default)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mwictl", description="Administer an mwiproxy cluster.")
    add_version(p, "mwictl")
    _common(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("status", help="cluster name, version and CA pin")
    c = sub.add_parser("create", help="create resources (roles) from a YAML file")
    c.add_argument("-f", "--filename", required=True)
    c.add_argument("--force", action="store_true", help="replace existing resources")
    g = sub.add_parser("get", help="show resources: roles, role/NAME, bots, tokens, db, agents")
    g.add_argument("resource")
    g.add_argument("--format", choices=["text", "yaml", "json"], default="yaml")
    r = sub.add_parser("rm", help="remove a resource: role/NAME")
    r.add_argument("resource")

    db = sub.add_parser("db", help="databases").add_subparsers(dest="sub", required=True)
    dbls = db.add_parser("ls", help="list databases")
    dbls.add_argument("--format", choices=["text", "json"], default="text")

    bots = sub.add_parser("bots", help="manage bots").add_subparsers(dest="sub", required=True)
    ba = bots.add_parser("add", help="add a bot and print its one-time join token")
    ba.add_argument("name")
    ba.add_argument("--roles", default="", help="comma-separated roles")
    ba.add_argument("--ttl", default="1h", help="join token TTL (default 1h)")
    bu = bots.add_parser("update", help="change a bot's roles")
    bu.add_argument("name")
    bu.add_argument("--add-roles", default="", help="comma-separated roles to add")
    bu.add_argument("--remove-roles", default="", help="comma-separated roles to remove")
    bu.add_argument("--set-roles", default=None, help="replace the roles")
    bls = bots.add_parser("ls", help="list bots")
    bls.add_argument("--format", choices=["text", "json"], default="text")
    brm = bots.add_parser("rm", help="remove a bot")
    brm.add_argument("name")

    tok = sub.add_parser("tokens", help="join tokens").add_subparsers(dest="sub", required=True)
    ta = tok.add_parser("add", help="add a join token (a bot's, or a database agent's)")
    ta.add_argument("--type", default="bot", choices=["bot", "db"])
    ta.add_argument("--bot-name", help="the bot the token is for (needed for --type=bot)")
    ta.add_argument("--ttl", default="1h")
    ta.add_argument("--format", choices=["text", "json"], default="text")
    tls_ = tok.add_parser("ls", help="list join tokens")
    tls_.add_argument("--format", choices=["text", "json"], default="text")
    trm = tok.add_parser("rm", help="remove a join token (the token or its ID)")
    trm.add_argument("token")

    agents = sub.add_parser("agents", help="database agents").add_subparsers(
        dest="sub", required=True)
    als = agents.add_parser("ls", help="list live database agents")
    als.add_argument("--format", choices=["text", "json"], default="text")

    lk = sub.add_parser("lock", help="lock a bot, role or user")
    target = lk.add_mutually_exclusive_group(required=True)
    target.add_argument("--bot")
    target.add_argument("--role")
    target.add_argument("--user")
    lk.add_argument("--message", default="")
    lk.add_argument("--ttl", default=None, help="lock duration, e.g. 1h (default: forever)")
    locks = sub.add_parser("locks", help="list or remove locks").add_subparsers(
        dest="sub", required=True)
    lls = locks.add_parser("ls", help="list active locks")
    lls.add_argument("--format", choices=["text", "json"], default="text")
    lrm = locks.add_parser("rm", help="remove a lock")
    lrm.add_argument("id")

    au = sub.add_parser("audit", help="show audit events")
    au.add_argument("--since", help="a duration (1h) or an RFC 3339 time")
    au.add_argument("--type", action="append", default=[], help="event type (repeatable)")
    au.add_argument("--limit", type=int, default=1000)
    au.add_argument("--format", choices=["text", "json"], default="text")

    auth = sub.add_parser("auth", help="certificate operations").add_subparsers(
        dest="sub", required=True)
    sign = auth.add_parser("sign", help="sign a database server certificate")
    sign.add_argument("--format", required=True, choices=["db"])
    sign.add_argument("--host", required=True, help="comma-separated host names / IPs")
    sign.add_argument("--out", required=True, help="writes OUT.crt, OUT.key, OUT.cas")
    sign.add_argument("--ttl", default="2160h")
    sign.add_argument("--overwrite", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mwiproxy.cli import mwictl_commands  # imported late: keeps --help fast

    return run_cli(lambda: mwictl_commands.dispatch(args))


if __name__ == "__main__":
    sys.exit(main())
