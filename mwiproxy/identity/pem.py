"""PEM helpers shared by every layer that reads or writes certificates and keys."""

from __future__ import annotations

import re

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.S)


def split_pem(data: bytes) -> list[tuple[str, bytes]]:
    """Return (label, block) for every PEM block in data, each block ending in a newline."""
    out = []
    for m in _BLOCK.finditer(data):
        block = m.group(0)
        if not block.endswith(b"\n"):
            block += b"\n"
        out.append((m.group(1).decode(), block))
    return out


def certificates(data: bytes) -> list[bytes]:
    return [b for label, b in split_pem(data) if label == "CERTIFICATE"]
