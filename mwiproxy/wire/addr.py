"""The one address parser: `host:port`, `[v6]:port`, `tcp://host:port`, `unix:///path`.

Every address the product reads - cluster.yaml and tbot.yaml keys, `--listen`,
`--proxy-server`, the diagnostics address, an agent's advertised address - goes
through `parse_address` (or `split_host_port`, its TCP half), so they all accept and
refuse the same spellings and say the same thing when they refuse one.

Nothing is filled in unless the caller asks: a default host or port is an explicit
parameter (`LOOPBACK` for a local listener, `DEFAULT_AUTH_PORT` for the cluster
address), so a config key that needs both parts still requires both. It sits in
`wire/` because it is a pure codec of a string, used from `config/` up to `cli/`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

LOOPBACK = "127.0.0.1"  # the host of a listen address written as `:port`
DEFAULT_AUTH_PORT = 3080  # the cluster proxy's port when an address names none

TCP: Literal["tcp"] = "tcp"
UNIX: Literal["unix"] = "unix"
HTTPS = "https"  # accepted for the cluster address (Teleport users write https://host)
LISTEN_SCHEMES = (TCP, UNIX)

_HOSTNAME = re.compile(r"^[a-zA-Z0-9_]([a-zA-Z0-9._-]*[a-zA-Z0-9_])?$")


@dataclass(frozen=True)
class Address:
    """A TCP host and port, or a Unix socket path."""

    scheme: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == UNIX:
            return f"unix://{self.path}"
        return f"tcp://{join_host_port(self.host, self.port)}"


def parse_address(text: str, *, schemes: tuple[str, ...] = (TCP,),
                  default_host: str | None = None, default_port: int | None = None,
                  min_port: int = 0) -> Address:
    """Parse `text` (a bare `host:port` is TCP); ValueError says what is wrong.

    `schemes` lists the accepted schemes (`https` reads as TCP); `default_host` fills an
    empty host (`:5432`), `default_port` a missing port; `min_port` 1 refuses port 0.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = TCP, text
    if scheme not in schemes:
        allowed = " or ".join(f"{s}://" for s in schemes)
        raise ValueError(f"{text!r}: scheme must be {allowed}")
    if scheme == UNIX:
        if not rest.startswith("/"):
            raise ValueError(f"{text!r}: a unix socket needs an absolute path (unix:///path)")
        return Address(UNIX, path=rest)
    host, port = split_host_port(rest, default_host=default_host, default_port=default_port,
                                 min_port=min_port, shown=text)
    return Address(TCP, host=host, port=port)


def split_address_list(text: str) -> list[str]:
    """`a:3080,b:3080` (several cluster processes, tried in order) → its items, stripped.

    Only the list is checked here (no empty item, no repeat); each item then goes through
    `parse_address` or `split_host_port` like a single address.
    """
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ValueError(f"{text!r}: an empty address in the list (write a:3080,b:3080)")
    if len(set(items)) != len(items):
        raise ValueError(f"{text!r}: an address appears twice in the list")
    return items


def parse_listen(text: str) -> Address:
    """Where a local listener binds: TCP (`:port` is loopback) or a Unix socket."""
    return parse_address(text, schemes=LISTEN_SCHEMES, default_host=LOOPBACK)


def split_host_port(addr: str, *, default_host: str | None = None,
                    default_port: int | None = None, min_port: int = 0,
                    shown: str = "") -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); ValueError says what is wrong."""
    shown = shown or addr
    host, port_text = _split(addr, shown, default_port is not None)
    if not host:
        if default_host is None:
            raise ValueError(f"{shown!r} is not host:port")
        host = default_host
    if not port_text and default_port is not None:
        return host, default_port
    if not port_text.isdigit() or not min_port <= int(port_text) <= 65535:
        raise ValueError(f"{shown!r}: port must be a number from {min_port} to 65535")
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    """The inverse of `split_host_port`: IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split(addr: str, shown: str, port_optional: bool) -> tuple[str, str]:
    """(host, port text) with the host checked; the port text may be empty."""
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        if rest and not rest.startswith(":") or not rest and not port_optional:
            raise ValueError(f"{shown!r} is not host:port")
        _check_ip(host, shown)
        return host, rest[1:]
    host, sep, port_text = addr.rpartition(":")
    if not sep:
        if not port_optional:
            raise ValueError(f"{shown!r} is not host:port")
        host, port_text = addr, ""
    if ":" in host:
        raise ValueError(f"{shown!r}: write IPv6 addresses in brackets, e.g. [::1]:3080")
    if host and not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{shown!r}: {host!r} is not a valid host name or address")
    return host, port_text


def _check_ip(host: str, shown: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"{shown!r}: {host!r} is not an IPv6 address") from None
