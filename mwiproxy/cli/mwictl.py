"""`mwictl`: the cluster admin CLI (tctl's verbs, for mwiproxy)."""

from __future__ import annotations

import argparse
import logging
import sys

from mwiproxy.cli import mwictl_rotate, mwictl_sessions, mwictl_users
from mwiproxy.cli.common import (
    add_version,
    add_version_command,
    print_version,
    run_cli,
    setup_logging,
)
from mwiproxy.cli.mwictl_output import add_format


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--identity", help="identity file (default: <data dir>/admin/identity)")
    p.add_argument("--auth-server", action="append", default=[],
                   help="cluster proxy address host:port, or several cluster processes on "
                   "one storage (a:3080,b:3080 or a repeated flag: the first that answers "
                   "is used; default: from <data dir>/cluster.json, else 127.0.0.1:3080)")
    p.add_argument("--data-dir", help="the cluster's data dir (default: $MWIPROXY_DATA_DIR or "
                   "the platform default)")
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="warnings on stderr: text (default) or json, one object per line")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mwictl", description="Administer an mwiproxy cluster.")
    add_version(p, "mwictl")
    _common(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_format(sub.add_parser("status", help="cluster name, version and CA pin"))
    c = sub.add_parser("create", help="create resources (roles) from a YAML file")
    c.add_argument("-f", "--filename", required=True, help="the YAML file (kind: role)")
    c.add_argument("--force", action="store_true", help="replace existing resources")
    g = sub.add_parser("get", help="show resources: roles, role/NAME, bots, tokens, db, agents")
    g.add_argument("resource", help="roles, role/NAME, bots, tokens, db or agents")
    add_format(g, default="yaml", help="yaml (default; one document per resource, what "
               "`create -f` reads), json, or text (yaml)")
    r = sub.add_parser("rm", help="remove a resource: role/NAME")
    r.add_argument("resource", help="role/NAME")

    db = sub.add_parser("db", help="databases").add_subparsers(
        dest="sub", required=True, metavar="COMMAND")
    add_format(db.add_parser("ls", help="list databases"))

    bots = sub.add_parser("bots", help="manage bots").add_subparsers(
        dest="sub", required=True, metavar="COMMAND")
    ba = bots.add_parser("add", help="add a bot and print its one-time join token")
    ba.add_argument("name", help="the bot's name")
    ba.add_argument("--roles", default="", help="comma-separated roles")
    ba.add_argument("--ttl", default="1h", help="join token TTL (default 1h)")
    bu = bots.add_parser("update", help="change a bot's roles")
    bu.add_argument("name", help="the bot's name")
    bu.add_argument("--add-roles", default="", help="comma-separated roles to add")
    bu.add_argument("--remove-roles", default="", help="comma-separated roles to remove")
    bu.add_argument("--set-roles", default=None, help="replace the roles")
    add_format(bots.add_parser("ls", help="list bots"))
    brm = bots.add_parser("rm", help="remove a bot")
    brm.add_argument("name", help="the bot's name")

    tok = sub.add_parser("tokens", help="join tokens").add_subparsers(
        dest="sub", required=True, metavar="COMMAND")
    ta = tok.add_parser("add", help="add a join token (a bot's, or a database agent's)")
    ta.add_argument("--type", default="bot", choices=["bot", "db"],
                    help="bot (default) or db (a database agent)")
    ta.add_argument("--bot-name", help="the bot the token is for (needed for --type=bot)")
    ta.add_argument("--ttl", default="1h", help="how long the token is valid (default 1h)")
    add_format(ta)
    add_format(tok.add_parser("ls", help="list join tokens"))
    trm = tok.add_parser("rm", help="remove a join token (the token or its ID)")
    trm.add_argument("token", help="the token, or its ID (`tokens ls`)")

    agents = sub.add_parser("agents", help="database agents").add_subparsers(
        dest="sub", required=True, metavar="COMMAND")
    add_format(agents.add_parser("ls", help="list live database agents"))

    lk = sub.add_parser("lock", help="lock a bot, role or user")
    target = lk.add_mutually_exclusive_group(required=True)
    target.add_argument("--bot", help="lock this bot")
    target.add_argument("--role", help="lock every identity with this role")
    target.add_argument("--user", help="lock this user (e.g. bot-NAME, agent.HOST_ID)")
    lk.add_argument("--message", default="", help="why: shown to whoever is refused")
    lk.add_argument("--ttl", default=None, help="lock duration, e.g. 1h (default: forever)")
    locks = sub.add_parser("locks", help="list or remove locks").add_subparsers(
        dest="sub", required=True, metavar="COMMAND")
    add_format(locks.add_parser("ls", help="list active locks"))
    lrm = locks.add_parser("rm", help="remove a lock")
    lrm.add_argument("id", help="the lock's ID (`locks ls`)")

    au = sub.add_parser("audit", help="show audit events, or verify the log's hash chain")
    au.add_argument("action", nargs="?", choices=["verify"],
                    help="verify: walk the hash chain, name the first break (exit 2)")
    au.add_argument("--head", action="store_true",
                    help="verify: print only the head HASH@ID, to keep somewhere else")
    au.add_argument("--expect-head", metavar="HASH@ID",
                    help="verify: a head printed earlier; the log must still contain it")
    au.add_argument("--since", help="a duration (1h) or an RFC 3339 time")
    au.add_argument("--type", action="append", default=[], help="event type (repeatable)")
    au.add_argument("--session", metavar="ID",
                    help="only the events of this database session (their `session` field)")
    au.add_argument("--limit", type=int, default=1000,
                    help="at most this many of the newest events (default 1000), read "
                         "page by page")
    au.add_argument("--before", type=int, metavar="ID",
                    help="only events older than this event id (page back from there)")
    add_format(au, help="text (default), json (one object per line) or yaml (a list)")
    mwictl_sessions.add_parser(sub)
    mwictl_users.add_parser(sub)
    add_version_command(sub)

    auth = sub.add_parser("auth", help="certificate operations").add_subparsers(
        dest="sub", required=True, metavar="COMMAND")
    sign = auth.add_parser("sign", help="sign a database server certificate")
    sign.add_argument("--format", required=True, choices=["db"],
                      help="db: a database server certificate")
    sign.add_argument("--host", required=True, help="comma-separated host names / IPs")
    sign.add_argument("--out", required=True, help="writes OUT.crt, OUT.key, OUT.cas")
    sign.add_argument("--ttl", default="2160h", help="the certificate's lifetime "
                      "(default 2160h)")
    sign.add_argument("--overwrite", action="store_true", help="replace existing files")
    mwictl_rotate.add_parser(auth)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        return print_version("mwictl", args.format)
    setup_logging(fmt=args.log_format, level=logging.WARNING)
    from mwiproxy.cli import mwictl_commands  # imported late: keeps --help fast

    return run_cli(lambda: mwictl_commands.dispatch(args))


if __name__ == "__main__":
    sys.exit(main())
