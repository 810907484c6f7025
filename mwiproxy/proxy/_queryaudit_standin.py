"""STAND-IN, to be deleted when h-auditread's branch is merged (issue 14 contract,
/tmp/brief/contract-audit.md): minimal versions of `mwiproxy.wire.sqlredact`
(redact_statement, param_digest), `mwiproxy.auth.rbac` (QueryAuditPolicy,
query_audit_policy) and `Session.audit_id`, so queryaudit.py runs before that merge.
queryaudit.py imports the real ones first; nothing else may import this module."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# only the plain case: ... ROLE|USER name [WITH] ... PASSWORD '...' (no lexer: the real
# sqlredact handles quotes, dollar quotes, comments and E'' strings)
_PASSWORD = re.compile(r"(?is)\b(?:create|alter)\s+(?:role|user)\b[^;]*?\bpassword\s+"
                       r"('(?:[^']|'')*')")


def redact_statement(sql: str) -> tuple[str, bool]:
    out, n = _PASSWORD.subn(lambda m: m.group(0)[:m.start(1) - m.start(0)] + "'****'", sql)
    return out, n > 0


def param_digest(value: bytes | None, key: bytes) -> str | None:
    if value is None:
        return None
    return "hmac-sha256:" + hmac.new(key, value, hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class QueryAuditPolicy:
    enabled: bool = True
    parameters: str = "hash"


def query_audit_policy(roles: Iterable[Any]) -> QueryAuditPolicy:
    return QueryAuditPolicy()


def audit_id(session: Any) -> str:
    """Session.audit_id, made on first use (the real one is a Session field)."""
    if not getattr(session, "audit_id", ""):
        session.audit_id = uuid.uuid4().hex
    return str(session.audit_id)
