"""Certificate signatures per second of one core: the user CA's `sign_identity` (what a
bot's renewal and each database output cost the cluster), timed in this process.

    python -m bench.signrate [--seconds 5]

The README's "Sizing" derives the signing capacity of a 1,000,000-bot cluster from it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

from mwiproxy.identity import oids
from mwiproxy.identity.authorities import create_authority, generate_private_key
from mwiproxy.identity.certs import Identity


def rate(seconds: float) -> tuple[int, float, float]:
    """(certificates signed, wall seconds, CPU seconds of this process) by the user CA
    for a bot identity; the CPU figure is what matters on a shared, loaded box."""
    ca = create_authority("user", "mwiproxy.local")
    pub = generate_private_key().public_key()  # the key a bot sends (one, reused)
    ident = Identity(user="bot-load", roles=("example-role",), usage=(oids.USAGE_DATABASE,),
                     bot_name="load", generation=2, bot_instance_id="i-1",
                     cluster="mwiproxy.local")
    ttl = dt.timedelta(hours=1)
    n = 0
    cpu = time.process_time()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        ca.sign_identity(ident, pub, ttl)
        n += 1
    return n, time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.signrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    n, took, cpu = rate(args.seconds)
    print(f"{n} certificates in {took:.2f} s wall, {cpu:.2f} s CPU: {n / took:.0f} "
          f"signatures/s wall, {n / cpu:.0f} per CPU-second ({cpu / n * 1e6:.0f} µs CPU "
          "each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
