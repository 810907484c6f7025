"""What the first bytes of a connection are: the result type shared by both builds.

Kinds and error names are public API (they reach logs and metrics); they match the
names in csrc/mwi_tlsrec.c exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

KIND_NEED_MORE = "need_more"  # too few bytes to tell what this is
KIND_TLS = "tls"
KIND_PG_SSL = "pg_ssl"
KIND_PG_GSSENC = "pg_gssenc"
KIND_PG_CANCEL = "pg_cancel"
KIND_PG_STARTUP = "pg_startup"
KIND_HTTP = "http"
KIND_GARBAGE = "garbage"  # rejected; FirstBytes.error says why

MAX_RECORD = 16384
MAX_HELLO = 65536
MAX_ALPN = 64  # as many of the longest names (255 bytes) as fill a 16 KiB record
MAX_NAME = 255
PG_MAX_STARTUP = 10000
PG_MAX_CANCEL_KEY = 256
HTTP_MAX_METHOD = 16

PG_SSL_CODE = 80877103
PG_GSSENC_CODE = 80877104
PG_CANCEL_CODE = 80877102


@dataclass(frozen=True, slots=True)
class FirstBytes:
    """Classification of a connection's first bytes.

    `kind` is known as early as possible; `complete` says the whole first message is
    present and valid. While incomplete, `need` is the least number of further bytes
    worth waiting for. When complete, `consumed` is the length of the first message.
    """

    kind: str
    complete: bool = False
    need: int = 0
    consumed: int = 0
    error: str | None = None
    record_version: int = 0
    legacy_version: int = 0
    sni: str | None = None
    alpn: tuple[str, ...] = ()  # latin-1 decoded, so any byte string round-trips
    versions: tuple[int, ...] = ()
    pg_protocol: int = 0
    pg_cancel_pid: int = 0
    pg_cancel_key: bytes = b""
    http_method: str = ""

    @property
    def rejected(self) -> bool:
        return self.kind == KIND_GARBAGE
