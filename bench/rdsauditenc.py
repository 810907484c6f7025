"""A Redis command's query-audit encoding alone, µs per record: 500 SET-like records
(`SET key:000123 xxx`, as the tap records them) to their events' canonical JSON texts,
by _native.redis_query_texts (one call per batch; the compiled build unless
MWIPROXY_NO_EXTENSIONS=1) and by the path it replaces (each event's dict built, then
encoded by canonical_fields; its digests by the pure-Python HMAC, so the old path's
`hash` column is slower than it was in the product), per parameter policy. The whole path (batched events, the
writer, SQLite): bench/queryaudit_path.py --engine redis.

    python -m bench.rdsauditenc [--records 500] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from functools import partial

from mwiproxy._native import (
    NATIVE,
    canonical_fields,
    pgaudit_decode,
    rdsaudit_py,
    redis_query_texts,
)
from mwiproxy._native.rdsauditenc_py import command_info
from mwiproxy.wire.sqlredact import _DIGEST_HEX, DIGEST_PREFIX

WHO = {"session": "0123456789abcdef", "user": "bot-bench", "db_service": "example-db",
       "db_user": "alice", "db_name": "example-db", "protocol": "redis", "session_id": 1}
KEY = b"k" * 32


def _records(n: int) -> list[bytes]:
    tap = rdsaudit_py.Tap()
    for i in range(n):
        key = b"key:%06d" % i
        tap.feed(0, b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$3\r\nxxx\r\n" % (len(key), key), 1)
    return tap.records


def _old(records: list[bytes], mode: str) -> list[str | None]:
    """Session 10's path: each record decoded, its event's dict built (the rules:
    rdsauditenc_py.command_info), then encoded by canonical_fields."""
    return [canonical_fields({**WHO, **command_info(pgaudit_decode(r), mode, KEY,
                                                   DIGEST_PREFIX, _DIGEST_HEX)})
            for r in records if r[:1] == b"K"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    records = _records(args.records)
    who = list(WHO.items())
    print(f"build: {'native' if NATIVE else 'pure'}; {len(records)} records; µs/record "
          f"(best of {args.repeat})")
    print(f"{'policy':8} {'redis_query_texts':>18} {'old path':>10}")
    for mode in ("omit", "hash", "plain"):
        new = redis_query_texts(records, mode, KEY, DIGEST_PREFIX, _DIGEST_HEX, who)
        if new != _old(records, mode):
            print(f"{mode}: the texts differ from the old path's", file=sys.stderr)
            return 1
        times = []
        for fn in (partial(redis_query_texts, records, mode, KEY, DIGEST_PREFIX, _DIGEST_HEX,
                           who),
                   partial(_old, records, mode)):
            number = 20
            best = min(timeit.repeat(fn, number=number, repeat=args.repeat))
            times.append(best / number / len(records) * 1e6)
        print(f"{mode:8} {times[0]:18.2f} {times[1]:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
