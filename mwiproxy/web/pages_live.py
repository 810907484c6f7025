"""Databases, live sessions (with a Lock button that cuts them), locks and the audit log.
A lock made here is the one `mwictl lock` makes (the auth API's `lock` handler): the
cluster's lock listener ends every session it applies to."""

from __future__ import annotations

import calendar
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mwiproxy.auth.errors import AuthError
from mwiproxy.auth.handlers import db_visible
from mwiproxy.web.app import PREFIX, redirect

if TYPE_CHECKING:
    from mwiproxy.web.app import WebUI

AUDIT_LIMIT = 500
MAX_FIELD = 256


def _arg(request: web.Request, name: str) -> str:
    return request.query.get(name, "")[:MAX_FIELD]


def _time(value: str) -> float | None:
    """An HTML datetime-local value (UTC) or empty."""
    if not value:
        return None
    for fmt in ("%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            return float(calendar.timegm(time.strptime(value, fmt)))
        except ValueError:
            pass
    raise web.HTTPBadRequest(text=f"time {value!r}: expected YYYY-MM-DDTHH:MM (UTC)")


def add_routes(ui: WebUI) -> None:
    async def databases(request: web.Request) -> web.StreamResponse:
        ui.require(request, "db", "list")
        roles = ui.roles(request)
        rows: dict[str, dict[str, Any]] = {}
        for db in ui.auth.databases.values():
            rows[db.name] = {"db": db, "agents": [], "where": "cluster"}
        for agent in ui.auth.agents.live():
            for db in agent.databases:
                if db.name in ui.auth.databases:
                    continue
                row = rows.setdefault(db.name, {"db": db, "agents": [], "where": "agent"})
                row["agents"].append((agent.display_name, agent.last_heartbeat))
        shown = [r for r in rows.values() if db_visible(roles, dict(r["db"].static_labels))]
        return ui.render(request, "databases.html", rows=shown)

    async def sessions(request: web.Request) -> web.StreamResponse:
        ui.require(request, "session", "list")
        live = ui.live.snapshot() if ui.live is not None else []
        now = time.time()
        rows = [{"id": s.audit_id, "user": s.identity.user, "bot": s.identity.bot_name,
                 "service": s.service, "db_user": s.db_user, "db_name": s.db_name,
                 "mode": s.mode, "bytes": sum(s.bytes_moved()), "remote": s.remote,
                 "duration": int(now - s.started)} for s in live]
        return ui.render(request, "sessions.html", rows=rows,
                         can_lock=ui.can(request, "lock", "create"))

    async def locks(request: web.Request) -> web.StreamResponse:
        ui.require(request, "lock", "list")
        rows = await ui.run(lambda: ui.call(request, "locks_ls"))
        return ui.render(request, "locks.html", rows=rows,
                         can_create=ui.can(request, "lock", "create"),
                         can_delete=ui.can(request, "lock", "delete"))

    async def lock_create(request: web.Request) -> web.StreamResponse:
        ui.require(request, "lock", "create")
        form = await request.post()
        kind, target = str(form.get("target_kind", "")), str(form.get("target", ""))
        message = str(form.get("message", ""))[:MAX_FIELD]
        ttl = str(form.get("ttl", ""))[:32] or None
        try:
            await ui.run(lambda: ui.call(request, "lock", target_kind=kind[:16],
                                         target=target[:MAX_FIELD], message=message, ttl=ttl))
        except (AuthError, ValueError) as e:
            return ui.render(request, "message.html", status=400, title="Locks",
                             message=getattr(e, "message", str(e)), link=f"{PREFIX}/locks")
        back = str(form.get("back", ""))
        redirect(f"{PREFIX}/sessions" if back == "sessions" else f"{PREFIX}/locks")

    async def lock_delete(request: web.Request) -> web.StreamResponse:
        ui.require(request, "lock", "delete")
        lock_id = request.match_info["id"]
        return await ui.change(request, "Locks", "locks", "locks_rm", id=lock_id)

    async def audit(request: web.Request) -> web.StreamResponse:
        ui.require(request, "event", "list")
        kind, who, db = _arg(request, "type"), _arg(request, "identity"), _arg(request, "db")
        session = _arg(request, "session")
        since, until = _time(_arg(request, "since")), _time(_arg(request, "until"))
        params: dict[str, Any] = {"limit": AUDIT_LIMIT}
        if kind:
            params["types"] = [kind]
        if session:
            params["session"] = session
        if since is not None:
            params["since"] = since
        try:
            events = await ui.run(lambda: ui.call(request, "audit", **params))
        except AuthError as e:
            return ui.render(request, "message.html", status=400, title="Audit log",
                             message=e.message, link=f"{PREFIX}/audit")
        events = [e for e in events
                  if (not who or who in (e.get("user"), e.get("by"), e.get("bot")))
                  and (not db or e.get("db_service") == db)
                  and (until is None or e["time"] <= until)]
        events.reverse()  # newest first
        verified = None
        if request.query.get("verify"):
            verified = await ui.run(lambda: ui.call(request, "audit_verify"))
        return ui.render(request, "audit.html", events=events, verified=verified,
                         f={"type": kind, "identity": who, "db": db, "session": session,
                            "since": _arg(request, "since"), "until": _arg(request, "until")},
                         skip=("id", "time", "type"))

    r = ui.app.router
    r.add_get(f"{PREFIX}/databases", databases)
    r.add_get(f"{PREFIX}/sessions", sessions)
    r.add_get(f"{PREFIX}/locks", locks)
    r.add_post(f"{PREFIX}/locks", lock_create)
    r.add_post(f"{PREFIX}/locks/{{id}}/delete", lock_delete)
    r.add_get(f"{PREFIX}/audit", audit)
