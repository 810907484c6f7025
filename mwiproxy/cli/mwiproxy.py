"""`mwiproxy`: the cluster server."""

from __future__ import annotations

import argparse
import sys

from mwiproxy.cli.common import add_version, run_cli, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mwiproxy",
        description="mwiproxy cluster: auth service, cluster proxy and database engines.")
    add_version(p, "mwiproxy")
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="run the cluster (embedded default without -c)")
    start.add_argument("-c", "--config", help="cluster.yaml (default: the embedded default)")
    start.add_argument("--data-dir", help="override data_dir")
    start.add_argument("--listen-addr", help="override proxy.listen_addr (host:port)")
    start.add_argument("--cluster-name", help="override cluster_name")
    start.add_argument("--roles", default="auth,proxy,db",
                       help="what this process runs: auth,proxy,db (the default: everything "
                            "in one process) or db (a database agent that joins a cluster)")
    start.add_argument("--auth-server", help="db role: the cluster proxy to join "
                       "(db_service.auth_server)")
    start.add_argument("--token", help="db role: a join token from `mwictl tokens add "
                       "--type=db`, or the path of a file holding it")
    start.add_argument("--ca-pin", action="append", default=[],
                       help="db role: the cluster's CA pin (`mwictl status`); repeatable")
    start.add_argument("-d", "--debug", action="store_true", help="debug logging")
    sub.add_parser("version", help="print the version")
    return p


ROLES = {"auth", "proxy", "db"}


def _roles(text: str) -> set[str]:
    roles = {r.strip() for r in text.split(",") if r.strip()}
    unknown = roles - ROLES
    if unknown:
        raise ValueError(f"--roles: unknown role(s) {', '.join(sorted(unknown))} "
                         "(known: auth, proxy, db)")
    if roles == {"db"} or roles == ROLES:
        return roles
    raise ValueError("--roles: run either auth,proxy,db (one process) or db (an agent); "
                     "auth and proxy run together, and a cluster without the db role "
                     "is one with no databases in its config")


def _start(args: argparse.Namespace) -> int:
    from mwiproxy.config.cluster import ClusterConfig, load_cluster_config

    roles = _roles(args.roles)

    cfg = load_cluster_config(args.config) if args.config else ClusterConfig.default(
        data_dir=args.data_dir)
    if args.data_dir:
        cfg.data_dir = args.data_dir
        cfg.storage.path = ""
    if args.listen_addr:
        if cfg.proxy.public_addr == cfg.proxy.listen_addr:
            cfg.proxy.public_addr = args.listen_addr
        cfg.proxy.listen_addr = args.listen_addr
    if args.cluster_name:
        cfg.cluster_name = args.cluster_name
    agent = cfg.db_service
    if args.auth_server:
        agent.auth_server = args.auth_server
    if args.token:
        agent.token = args.token
    agent.ca_pins += args.ca_pin
    if roles == {"db"}:
        if args.listen_addr:
            agent.listen_addr = args.listen_addr
        agent.validate()
    setup_logging(args.debug, cfg.log.format)

    import uvloop

    if roles == {"db"}:
        from mwiproxy.dbagent.agent import run as run_agent

        uvloop.run(run_agent(cfg))
        return 0
    from mwiproxy.server import run

    uvloop.run(run(cfg))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        import mwiproxy

        print(f"mwiproxy {mwiproxy.__version__}")
        return 0
    return run_cli(lambda: _start(args))


if __name__ == "__main__":
    sys.exit(main())
