"""The auth API methods of database agents: join, renew, heartbeat, goodbye and the
session-bound database-client certificate (see auth/agents.py), plus `agents ls`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mwiproxy.auth.agents import DEFAULT_AGENT_TTL, DEFAULT_DB_CLIENT_TTL, AgentCerts, AgentRecord
from mwiproxy.auth.errors import BadRequest
from mwiproxy.auth.request import Request

if TYPE_CHECKING:
    from mwiproxy.auth.service import AuthService


def _agent_certs(s: AuthService, c: AgentCerts) -> dict[str, Any]:
    return {"host_id": c.host_id, "cert": c.cert_pem.decode(),
            "server_cert": c.server_cert_pem.decode(), "cas": s.ca_bundle(),
            "expires": c.expires}


def _agent_hosts(r: Request) -> list[str]:
    return r.strings("hosts") if r.params.get("hosts") else ["localhost", "127.0.0.1"]


def _agent_join(s: AuthService, r: Request) -> Any:
    certs = s.agents.join(r.text("token"), r.public_key(), hosts=_agent_hosts(r),
                          hostname=r.text("hostname", ""),
                          ttl=_agent_ttl(s, r), remote=r.remote)
    return _agent_certs(s, certs)


def _agent_ttl(s: AuthService, r: Request) -> dt.timedelta:
    return min(r.duration("ttl", DEFAULT_AGENT_TTL), s.limits.max_certificate_ttl)


def _agent_renew(s: AuthService, r: Request) -> Any:
    assert r.caller is not None
    certs = s.agents.renew(r.caller, r.public_key(), hosts=_agent_hosts(r),
                           ttl=_agent_ttl(s, r), remote=r.remote)
    return _agent_certs(s, certs)


def _agent_heartbeat(s: AuthService, r: Request) -> Any:
    assert r.caller is not None
    dbs = r.params.get("databases") or []
    if not isinstance(dbs, list):
        raise BadRequest("parameter 'databases' must be a list")
    reply = s.agents.heartbeat(r.caller, addr=r.text("addr"), hostname=r.text("hostname", ""),
                               databases=dbs, ttl=r.params.get("ttl") or 0)
    # how agents follow a CA rotation: the trusted bundles, and who signs now
    return {**reply, "cas": s.ca_bundle(), "signers": s.rotation.signers()}


def _agent_goodbye(s: AuthService, r: Request) -> Any:
    assert r.caller is not None
    s.agents.goodbye(r.caller)
    return {"ok": True}


def _agent_sign_db_client(s: AuthService, r: Request) -> Any:
    assert r.caller is not None
    pem = s.agents.sign_db_client(r.caller, r.text("db_user"), r.public_key(),
                                  r.duration("ttl", DEFAULT_DB_CLIENT_TTL),
                                  service=r.text("service", ""), grant=r.text("grant", ""))
    return {"cert": pem.decode(), "db_ca": s.cas["db"].cert_pem.decode()}


def _agent_dict(a: AgentRecord) -> dict[str, Any]:
    return {"host_id": a.host_id, "hostname": a.hostname, "addr": a.addr,
            "databases": [d.name for d in a.databases], "expires": a.expires,
            "last_heartbeat": a.last_heartbeat, "cert_sha256": a.cert_sha256}


def _agents_ls(s: AuthService, r: Request) -> Any:
    return [_agent_dict(a) for a in s.agents.live()]


AGENT_METHODS: dict[str, tuple[str, Callable[[AuthService, Request], Any]]] = {
    "agent_join": ("anyone", _agent_join),
    "agent_renew": ("agent", _agent_renew),
    "agent_heartbeat": ("agent", _agent_heartbeat),
    "agent_goodbye": ("agent", _agent_goodbye),
    "agent_sign_db_client": ("agent", _agent_sign_db_client),
    "agents_ls": ("admin", _agents_ls),
}
