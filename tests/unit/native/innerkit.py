"""A PostgreSQL client's own TLS carried in an outer TLS stream of the build under test,
for the TLS-inside-TLS tests (TLSStream.wrap_inner), framed by `-ping` or not.

The client is the stdlib's SSLObject over memory BIOs (an independent TLS stack): it
tells a close_notify from a bare end. Framed, its records travel in frames cut at random
sizes with keepalives between them, and the outer writes are cut at random too, so the
server's deframer meets headers split anywhere."""

from __future__ import annotations

import asyncio
import random
import ssl
from typing import Any

from mwiproxy._native import Framing
from mwiproxy._native.tls_py import _memfile
from mwiproxy.relay.streams import FramedStream
from mwiproxy.wire import ping

from .relaykit import tcp_pair


class InnerClient:
    def __init__(self, outer: Any, ctx: ssl.SSLContext, framed: bool = False,
                 seed: int = 0) -> None:
        self.outer = outer
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=False)
        self.close_notify = False  # the peer's end was a close_notify, not a bare end
        self.deframer = ping.Deframer() if framed else None
        self._rng = random.Random(seed)
        # framed: the first flush (the ClientHello: a keepalive, then one frame) stops
        # after `first_cut` bytes until `gate` opens
        self.first_cut: int | None = None
        self.gate = asyncio.Event()

    def _frames(self, data: bytes) -> list[bytes]:
        """The records as frames (random sizes, keepalives between), cut for the outer
        writes at random places."""
        raw, i = bytearray(), 0
        while i < len(data):
            n = self._rng.choice([1, 3, 200, 5000, 20000])
            raw += ping.KEEPALIVE * self._rng.randint(0, 1) + ping.frame(data[i:i + n])
            i += n
        cuts = sorted({self._rng.randint(1, len(raw)) for _ in range(3)} | {len(raw)})
        return [bytes(raw[a:b]) for a, b in zip([0, *cuts], cuts, strict=False) if b > a]

    async def _flush(self) -> None:
        if not self._out.pending:
            return
        data = self._out.read()
        if self.first_cut is not None:
            raw, cut, self.first_cut = ping.KEEPALIVE + ping.frame(data), self.first_cut, None
            await self.outer.write(raw[:cut])
            await self.gate.wait()
            await self.outer.write(raw[cut:])
            return
        for piece in [data] if self.deframer is None else self._frames(data):
            await self.outer.write(piece)

    async def _fill(self) -> None:
        while True:
            data = await self.outer.read(1 << 16)
            if not data:
                self._in.write_eof()
                return
            if self.deframer is not None:
                data = self.deframer.feed(data)  # only keepalives: read on
            if data:
                self._in.write(data)
                return

    async def handshake(self) -> None:
        while True:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            except ssl.SSLError:
                await self._flush()  # the alert
                raise
            await self._flush()
            return

    async def write(self, data: bytes) -> None:
        for i in range(0, len(data), 1 << 20):
            self._obj.write(data[i:i + (1 << 20)])
            await self._flush()

    async def read(self, n: int = 1 << 20) -> bytes:
        while True:
            try:
                data = self._obj.read(n)
                self.close_notify |= not data  # the stdlib says b"" for a close_notify only
                return data
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except ssl.SSLZeroReturnError:
                self.close_notify = True
                return b""
            except ssl.SSLEOFError:
                return b""

    async def read_all(self, limit: int | None = None) -> bytes:
        out = bytearray()
        while limit is None or len(out) < limit:
            chunk = await self.read()
            if not chunk:
                break
            out += chunk
        return bytes(out)

    async def shut(self) -> None:
        """Our close_notify (the read side stays open)."""
        try:
            self._obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        await self._flush()


async def inner_pair(mod: Any, pki: Any, client_cert: Any = "default",
                     verify: str = "optional", framed: bool = False,
                     seed: int = 0, first_cut: int | None = None
                     ) -> tuple[Any, InnerClient]:
    """(the proxy's inner server stream, the client's inner TLS), handshaken; the proxy
    reads the start of the ClientHello itself first, like after an SSLRequest (framed:
    through a deframer, whose state the inner TLS takes over; `first_cut`: that read
    gets exactly the first so many bytes of the framed stream)."""
    loop = asyncio.get_running_loop()
    c, s = tcp_pair()
    outer_server = mod.TLSStream(loop, pki.server_ctx(mod, verify="optional"), s.detach())
    outer_client = mod.TLSStream(loop, pki.client_ctx(mod, with_cert=False), c.detach(),
                                 server_hostname="proxy.mwi.test")
    await asyncio.gather(outer_server.handshake(), outer_client.handshake())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=pki.ca.pem.decode())
    if client_cert is not None:
        issued = pki.client if client_cert == "default" else client_cert
        with _memfile(issued.cert_pem) as cert, _memfile(issued.key_pem) as key:
            ctx.load_cert_chain(cert, key)
    client = InnerClient(outer_client, ctx, framed, seed)
    client.first_cut = first_cut
    hello = asyncio.ensure_future(client.handshake())
    framing = None
    if first_cut is not None:
        deframer = ping.Deframer()
        initial = deframer.feed(await outer_server.read(1 << 16))
        framing = Framing(None, deframer.header, deframer.payload_left)
        client.gate.set()
    elif framed:
        setup = FramedStream(outer_server)
        initial = await setup.read(1 << 16)
        framing = setup.framing(None)
    else:
        initial = await outer_server.read(1 << 16)  # the ClientHello, read before the wrap
    server = outer_server.wrap_inner(pki.server_ctx(mod, verify=verify), framing=framing)
    assert server.framed == framed
    try:
        await asyncio.gather(server.handshake(initial), hello)
    except BaseException:
        server.close()
        outer_client.close()
        raise
    return server, client
