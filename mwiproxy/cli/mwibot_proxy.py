"""`mwibot proxy … db …`: the local database proxy, with tbot's command line.

    mwibot [-c tbot.yaml] proxy --proxy=HOST:PORT --destination-dir=DIR \\
        db --port=PORT [--tunnel] [--db-user USER] [--db-name DB] SERVICE

`--proxy-server` is accepted for `--proxy`. Without --proxy the `proxy_server` of the
tbot.yaml given with -c is used. Also the runner of the bot's `database-tunnel`
services. Runnable on its own: `python -m mwiproxy.cli.mwibot_proxy proxy …`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from mwiproxy.cli.common import setup_logging


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `proxy` to mwibot's commands and serve `database-tunnel` services."""
    p = sub.add_parser("proxy", help="run a local proxy to a database behind the cluster",
                       description="Run a local proxy that carries database connections to "
                                   "the cluster proxy with the bot's credentials.")
    p.add_argument("--proxy", "--proxy-server", dest="proxy_server", default="",
                   help="the cluster proxy, host:port (default: proxy_server of -c)")
    p.add_argument("--destination-dir", required=True,
                   help="the directory a bot `database` output keeps renewed")
    p.add_argument("-d", "--debug", action="store_true", help="debug logging")
    kinds = p.add_subparsers(dest="proxy_kind", metavar="KIND", required=True)
    db = kinds.add_parser("db", help="a database")
    db.add_argument("--port", type=int, default=0, help="local port on 127.0.0.1 "
                    "(default: a free one, printed on start)")
    db.add_argument("--listen", default="", help="instead of --port: host:port or "
                    "unix:///path")
    db.add_argument("--tunnel", action="store_true", help="authenticated tunnel: attach the "
                    "credentials; clients connect without TLS or certificates")
    db.add_argument("-u", "--db-user", default="", help="database user (checked against "
                    "the certificate)")
    db.add_argument("-n", "--db-name", default="", help="database name (checked against "
                    "the certificate)")
    db.add_argument("service", help="the database service name (as in `mwictl db ls`)")
    db.set_defaults(func=run_proxy_db)
    _register_tunnel_runner()


def _register_tunnel_runner() -> None:
    try:
        from mwiproxy.bot.tunnels import register_tunnel_runner
    except ImportError:
        return
    from mwiproxy.localproxy.tunnel import serve_database_tunnel

    register_tunnel_runner(serve_database_tunnel)


def _proxy_addr(args: argparse.Namespace) -> str:
    if args.proxy_server:
        return str(args.proxy_server)
    config = getattr(args, "config", None)
    if config:
        from mwiproxy.config.bot import load_bot_config

        cfg = load_bot_config(config)
        if cfg.proxy_server or cfg.auth_server:
            return cfg.proxy_server or cfg.auth_server
    raise SystemExit("mwibot proxy: --proxy=HOST:PORT is needed (or -c tbot.yaml with "
                     "proxy_server)")


def run_proxy_db(args: argparse.Namespace) -> int:
    import uvloop

    from mwiproxy.localproxy.creds import CredentialsError, DirectoryCredentials
    from mwiproxy.localproxy.server import LocalProxy

    setup_logging(getattr(args, "debug", False))
    proxy = LocalProxy(
        listen=args.listen or f"127.0.0.1:{args.port}", proxy_addr=_proxy_addr(args),
        service=args.service, credentials=DirectoryCredentials(args.destination_dir),
        tunnel=args.tunnel, database=args.db_name, username=args.db_user,
        origin=args.destination_dir)
    try:
        uvloop.run(_serve(proxy))
    except CredentialsError as e:
        print(f"ERROR: mwibot proxy: {e}", file=sys.stderr)
        return 1
    return 0


async def _serve(proxy: Any) -> None:
    await proxy.start()
    print(f"mwibot proxy: listening on {proxy.address} for database {proxy.service!r} "
          f"({'tunnel' if proxy.tunnel else 'TLS pass-through'} mode)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.ensure_future(proxy.serve_forever())
    await stop.wait()
    serving.cancel()
    await proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mwibot")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
