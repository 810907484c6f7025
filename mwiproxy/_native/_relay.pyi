import asyncio
import socket
from collections.abc import Callable

from .relaytypes import AcceptorStats, RelayStats

class Engine:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        use_splice: bool = ...,
        pipe_size: int = ...,
        buf_size: int = ...,
        pool_max: int = ...,
    ) -> None: ...
    def close(self) -> None: ...
    @property
    def relays_running(self) -> int: ...

def engine_for(
    loop: asyncio.AbstractEventLoop,
    *,
    use_splice: bool = ...,
    pipe_size: int = ...,
    buf_size: int = ...,
    pool_max: int = ...,
) -> Engine: ...
def close_engine(loop: asyncio.AbstractEventLoop) -> None: ...

class TLSContext:
    server_side: bool
    verify: str
    alpn_protocols: tuple[str, ...]
    def __init__(
        self,
        server_side: bool,
        cert_pem: bytes | None = ...,
        key_pem: bytes | None = ...,
        ca_pem: bytes | None = ...,
        verify: str = ...,
        alpn: list[str] | None = ...,
    ) -> None: ...

class TLSStream:
    context: TLSContext
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        context: TLSContext,
        fd: int,
        server_hostname: str | None = ...,
    ) -> None: ...
    @property
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    async def aclose(self) -> None: ...
    async def handshake(self, initial: bytes = ...) -> None: ...
    async def read(self, max_bytes: int = ...) -> bytes: ...
    async def write(self, data: bytes | bytearray | memoryview) -> None: ...
    def peer_cert_der(self) -> bytes | None: ...
    def alpn(self) -> str | None: ...
    def version(self) -> str: ...
    def server_name(self) -> str | None: ...
    def session_reused(self) -> bool: ...

class Relay:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        a: int | TLSStream,
        b: int | TLSStream,
        on_done: Callable[[str], object] | None = ...,
        idle_timeout: float | None = ...,
        close_timeout: float | None = ...,
    ) -> None: ...
    def start(self) -> None: ...
    def close(self, farewell_a: bytes | bytearray | memoryview = ...) -> None: ...
    def stats(self) -> RelayStats: ...
    @property
    def done(self) -> bool: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def errno(self) -> int: ...

class Acceptor:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket | int,
        on_accept: Callable[[int | TLSStream], object],
        context: TLSContext | None = ...,
        handshake_timeout: float | None = ...,
    ) -> None: ...
    def close(self) -> None: ...
    def stats(self) -> AcceptorStats: ...
    @property
    def closed(self) -> bool: ...
