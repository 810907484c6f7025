"""`mwibot`: the bot (credential renewer) and its local database proxy."""

from __future__ import annotations

import argparse
import sys

from mwiproxy.cli.common import add_version


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mwibot",
        description="Join an mwiproxy cluster, keep short-lived database credentials renewed "
                    "and run a local database proxy.")
    add_version(p, "mwibot")
    p.add_subparsers(dest="command", metavar="COMMAND")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
