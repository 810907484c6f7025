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
    start.add_argument("-d", "--debug", action="store_true", help="debug logging")
    sub.add_parser("version", help="print the version")
    return p


def _start(args: argparse.Namespace) -> int:
    from mwiproxy.config.cluster import ClusterConfig, load_cluster_config

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
    setup_logging(args.debug, cfg.log.format)

    import uvloop

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
