"""One process of the concurrency load: opens connections and holds them idle.

`python -m bench.idleclient PORT COUNT SOURCE_IP [--ca CA.pem]` opens COUNT connections
from SOURCE_IP (a 127.0.0.x address: each process its own, so ephemeral ports never run
out), proves each one works with a 1-byte round trip (through TLS with --ca), prints
"held H errors E" and keeps them open until its stdin closes. The fd limit (20,000 per
process here) is why the load is spread over several of these.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from typing import Any

from .tlspki import SERVER_NAME

_IN_FLIGHT = 64


async def _hold(port: int, count: int, source: str, ctx: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(_IN_FLIGHT)
    held: list[Any] = []
    errors: list[str] = []

    async def one() -> None:
        async with sem:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(source, 0), ssl=ctx,
                    server_hostname=SERVER_NAME if ctx else None)
                writer.write(b"x")
                if await asyncio.wait_for(reader.readexactly(1), 30) != b"x":
                    raise ConnectionError("bad echo")
                held.append(writer)
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                errors.append(repr(exc))

    await asyncio.gather(*(one() for _ in range(count)))
    print(f"held {len(held)} errors {len(errors)}", errors[:1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # hold until the parent says so
    for w in held:
        w.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("source")
    parser.add_argument("--ca")
    args = parser.parse_args()
    ctx = None
    if args.ca:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(args.ca)
    import uvloop

    uvloop.run(_hold(args.port, args.count, args.source, ctx))


if __name__ == "__main__":
    main()
