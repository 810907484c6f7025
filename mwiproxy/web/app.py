"""The web UI's application: aiohttp routes, the security middleware, rendering.

Every response carries a Content-Security-Policy without inline script or style
(`default-src 'self'`), frame-ancestors 'none' / X-Frame-Options DENY and nosniff; an
authenticated page is `no-store`. A request past the public pages (login, invite,
static) needs a live session cookie (auth/users.py: idle and absolute expiry), and the
user must not be locked (user or role lock, judged at each request). Every POST must
come from this origin (Origin, else Referer) and carry the CSRF token (the session's,
or the pre-login cookie's on the login and invite forms), compared in constant time.
What a user may see and do is `rbac.check_rule` over the `rules` of their roles, the
same check the auth API makes.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import jinja2
from aiohttp import web

import mwiproxy
from mwiproxy.auth.audit_limit import LimitedAudit
from mwiproxy.auth.errors import AuthError
from mwiproxy.auth.locks import describe
from mwiproxy.auth.rbac import check_rule
from mwiproxy.auth.request import Request
from mwiproxy.auth.service import AuthService
from mwiproxy.auth.users import WebSession
from mwiproxy.identity.certs import Identity
from mwiproxy.web import bridge

log = logging.getLogger("mwiproxy.web")

COOKIE = "mwi_session"
PRE_COOKIE = "mwi_pre"  # the login and invite forms' CSRF token (before a session)
PREFIX = "/web"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PUBLIC = (f"{PREFIX}/login", f"{PREFIX}/invite/", f"{PREFIX}/static/")
WEB_DENIED = "web.denied"
MAX_BODY = 256 * 1024  # a role's YAML is the largest thing posted
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WebUI:
    def __init__(self, auth: AuthService, live_sessions: Any = None) -> None:
        self.auth = auth
        self.live = live_sessions  # proxy/sessions.SessionRegistry (the cluster's)
        here = Path(__file__).parent
        self.jinja = jinja2.Environment(
            loader=jinja2.FileSystemLoader(here / "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined)
        self.jinja.filters["when"] = _when
        self.jinja.filters["ago"] = _ago
        self.app = web.Application(middlewares=[self._headers, self._guard],
                                   client_max_size=MAX_BODY)
        self.app.router.add_static(f"{PREFIX}/static", here / "static")
        self.app.router.add_get("/", _root)
        from mwiproxy.web import account, pages, pages_live  # the route tables
        account.add_routes(self)
        pages.add_routes(self)
        pages_live.add_routes(self)
        self._runner: web.AppRunner | None = None
        # anyone reaching the port can be refused: rate limited as tls.refused is
        self.denials = LimitedAudit(auth.audit.emit, WEB_DENIED, "web refusals")

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                     keepalive_timeout=15)
        await self._runner.setup()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    caller: Identity | None, remote: str) -> None:
        """The listener's handler for ALPN http/1.1 and for no ALPN."""
        assert self._runner is not None and self._runner.server is not None
        await bridge.serve(self._runner.server, reader, writer)

    # -- helpers for the route modules ---------------------------------------------------

    async def run(self, fn: Callable[[], T]) -> T:
        """Storage work off the loop (PostgreSQL storage: round trips)."""
        return await asyncio.to_thread(fn)

    def render(self, request: web.Request, template: str, status: int = 200,
               **ctx: Any) -> web.Response:
        session: WebSession | None = request.get("session")
        csrf = session.csrf if session else request.get("pre", "")
        body = self.jinja.get_template(template).render(
            user=session.user if session else "", csrf=csrf, cluster=self.auth.cluster,
            version=mwiproxy.__version__, nav=self.nav(request) if session else [],
            path=request.path, **ctx)
        resp = web.Response(text=body, content_type="text/html", status=status)
        if "pre_new" in request:
            resp.set_cookie(PRE_COOKIE, request["pre"], path=PREFIX, secure=True,
                            httponly=True, samesite="Strict", max_age=3600)
        return resp

    def roles(self, request: web.Request) -> list[Any]:
        return self.auth.roles_for(request["session"].roles)

    def can(self, request: web.Request, resource: str, verb: str) -> bool:
        roles = self.roles(request)
        if resource == "event":  # Teleport's name; `audit` is read as the same
            return check_rule(roles, "event", verb) or check_rule(roles, "audit", verb)
        return check_rule(roles, resource, verb)

    def require(self, request: web.Request, resource: str, verb: str) -> None:
        if not self.can(request, resource, verb):
            user = request["session"].user
            self.denied(request, user=user, resource=resource, verb=verb)
            raise web.HTTPForbidden(text=f"{user} may not {verb} {resource} "
                                    "(the rules of your roles do not allow it)")

    def call(self, request: web.Request, method: str, **params: Any) -> Any:
        """An auth API handler as the web user (its audit events name them)."""
        from mwiproxy.auth.handlers import METHODS
        session: WebSession = request["session"]
        caller = Identity(user=session.user, roles=tuple(session.roles))
        return METHODS[method][1](self.auth, Request(caller, params, request.remote or ""))

    def denied(self, request: web.Request, **fields: Any) -> None:
        """Audit a refused request (web.denied), within auth/audit_limit's buckets."""
        remote = request.remote or ""
        self.denials.record(remote, {"path": request.path, "remote": remote, **fields})

    async def change(self, request: web.Request, title: str, page: str, method: str,
                     **params: Any) -> web.StreamResponse:
        """An auth API change as the web user, then back to `page` (its list); a refusal
        is shown on a message page (titled `title`) linking back."""
        try:
            await self.run(lambda: self.call(request, method, **params))
        except AuthError as e:
            return self.render(request, "message.html", status=400, title=title,
                               message=e.message, link=f"{PREFIX}/{page}")
        redirect(f"{PREFIX}/{page}")

    def nav(self, request: web.Request) -> list[tuple[str, str]]:
        items = [("Status", f"{PREFIX}/")]
        for label, path, resource in (("Roles", "roles", "role"), ("Bots", "bots", "bot"),
                                      ("Join tokens", "tokens", "token"),
                                      ("Databases", "databases", "db"),
                                      ("Sessions", "sessions", "session"),
                                      ("Locks", "locks", "lock"), ("Audit log", "audit", "event")):
            if self.can(request, resource, "list"):
                items.append((label, f"{PREFIX}/{path}"))
        return items

    # -- middleware ----------------------------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            resp = e
        h = resp.headers
        h["Content-Security-Policy"] = CSP
        h["X-Frame-Options"] = "DENY"
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "same-origin"  # no-referrer would make Origin "null"
        h["Cross-Origin-Opener-Policy"] = "same-origin"
        if "session" in request or not request.path.startswith(f"{PREFIX}/static/"):
            h["Cache-Control"] = "no-store"
        return resp

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        public = request.path.startswith(PUBLIC) or request.path == "/"
        if request.method not in ("GET", "HEAD", "POST"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
        if request.method == "POST" and not _same_origin(request):
            self.denied(request, user="", reason="cross-origin POST")
            raise web.HTTPForbidden(text="cross-origin request refused")
        if public:
            pre = request.cookies.get(PRE_COOKIE, "")
            if len(pre) < 32 or len(pre) > 64:
                pre = secrets.token_urlsafe(32)
                request["pre_new"] = True
            request["pre"] = pre
            if request.method == "POST":
                await self._check_csrf(request, pre)
            return await handler(request)
        secret = request.cookies.get(COOKIE, "")
        session = await self.run(lambda: self.auth.users.session(secret))
        if session is None:
            redirect(f"{PREFIX}/login")
        request["session"], request["secret"] = session, secret
        lock = await self.run(lambda: self.auth.locks.find(bot="", user=session.user,
                                                           roles=session.roles))
        if lock is not None:
            self.denied(request, user=session.user, reason=describe(lock))
            raise web.HTTPForbidden(text=f"refused: {describe(lock)}")
        if request.method == "POST":
            await self._check_csrf(request, session.csrf)
        return await handler(request)

    async def _check_csrf(self, request: web.Request, expected: str) -> None:
        form = await request.post()
        got = form.get("csrf", "")
        if not isinstance(got, str) or not expected or not hmac.compare_digest(
                got.encode(), expected.encode()):
            session = request.get("session")
            self.denied(request, user=session.user if session else "",
                        reason="missing or wrong CSRF token")
            raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page")


def _same_origin(request: web.Request) -> bool:
    want = f"https://{request.host}"
    origin = request.headers.get("Origin")
    if origin is not None:
        return hmac.compare_digest(origin.encode(), want.encode())
    referer = request.headers.get("Referer", "")
    return referer == want or referer.startswith(want + "/")


def redirect(to: str) -> NoReturn:
    raise web.HTTPSeeOther(to)


async def _root(_request: web.Request) -> web.StreamResponse:
    redirect(f"{PREFIX}/")


def _when(ts: float | None) -> str:
    if not ts:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    s = max(0, int(time.time() - ts))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"
