"""One auth API request: who calls (None before a bot has joined) and its parameters,
with the typed accessors every handler uses."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from mwiproxy.auth.errors import BadRequest
from mwiproxy.config.durations import parse_duration
from mwiproxy.identity.authorities import PublicKey, load_public_key
from mwiproxy.identity.certs import Identity

Caller = Identity | None


@dataclass
class Request:
    caller: Caller
    params: dict[str, Any]
    remote: str = ""

    def text(self, key: str, default: str | None = None) -> str:
        v = self.params.get(key, default)
        if not isinstance(v, str):
            raise BadRequest(f"parameter {key!r} must be a string")
        return v

    def strings(self, key: str) -> list[str]:
        v = self.params.get(key) or []
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise BadRequest(f"parameter {key!r} must be a list of strings")
        return v

    def duration(self, key: str, default: dt.timedelta) -> dt.timedelta:
        v = self.params.get(key)
        if v in (None, ""):
            return default
        try:
            return parse_duration(v)
        except ValueError as e:
            raise BadRequest(f"parameter {key!r}: {e}") from None

    @property
    def who(self) -> str:
        return self.caller.user if self.caller else "anonymous"

    def public_key(self) -> PublicKey:
        try:
            return load_public_key(self.text("public_key").encode())
        except (ValueError, TypeError) as e:
            raise BadRequest(f"public_key: {e}") from None
