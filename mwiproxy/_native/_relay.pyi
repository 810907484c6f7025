import asyncio
from collections.abc import Callable

from .relaytypes import RelayStats

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

class Relay:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd_a: int,
        fd_b: int,
        on_done: Callable[[str], object] | None = ...,
        idle_timeout: float | None = ...,
        close_timeout: float | None = ...,
    ) -> None: ...
    def start(self) -> None: ...
    def close(self) -> None: ...
    def stats(self) -> RelayStats: ...
    @property
    def done(self) -> bool: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def errno(self) -> int: ...
