"""Logging in and out, and the invite page (password + TOTP, verified before the
account is active). The work is auth/users.py's; this is the HTTP side."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from mwiproxy.auth import totp
from mwiproxy.auth.errors import BadRequest
from mwiproxy.auth.users import SESSION_ABSOLUTE, LoginRefused
from mwiproxy.web.app import COOKIE, PREFIX

if TYPE_CHECKING:
    from mwiproxy.web.app import WebUI

MAX_FIELD = 1024


def _field(form: object, name: str) -> str:
    value = form.get(name, "") if hasattr(form, "get") else ""
    return value[:MAX_FIELD] if isinstance(value, str) else ""


def add_routes(ui: WebUI) -> None:
    async def login_form(request: web.Request) -> web.StreamResponse:
        return ui.render(request, "login.html", error="")

    async def login(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        name, password, code = (_field(form, k) for k in ("user", "password", "code"))
        remote = request.remote or ""
        try:
            secret, _session = await ui.run(
                lambda: ui.auth.users.login(name, password, code, remote))
        except LoginRefused as e:
            return ui.render(request, "login.html", status=401, error=str(e))
        resp = web.HTTPSeeOther(f"{PREFIX}/")
        resp.set_cookie(COOKIE, secret, path=PREFIX, secure=True, httponly=True,
                        samesite="Strict", max_age=int(SESSION_ABSOLUTE))
        raise resp

    async def logout(request: web.Request) -> web.StreamResponse:
        session = request["session"]
        await ui.run(lambda: ui.auth.users.logout(request["secret"], session.user,
                                                  request.remote or ""))
        resp = web.HTTPSeeOther(f"{PREFIX}/login")
        resp.del_cookie(COOKIE, path=PREFIX, secure=True, httponly=True, samesite="Strict")
        raise resp

    async def invite_form(request: web.Request) -> web.StreamResponse:
        secret = request.match_info["secret"]
        found = await ui.run(lambda: ui.auth.users.invite(secret))
        if found is None:
            return ui.render(request, "message.html", status=404, title="Invite",
                             message="This invite is not valid: it was used, it expired, "
                             "or the link is incomplete. Ask for a new one.")
        return _invite_page(ui, request, secret, *found, error="")

    async def invite(request: web.Request) -> web.StreamResponse:
        secret = request.match_info["secret"]
        form = await request.post()
        password, again, code = (_field(form, k) for k in ("password", "password2", "code"))
        found = await ui.run(lambda: ui.auth.users.invite(secret))
        if found is None:
            return ui.render(request, "message.html", status=404, title="Invite",
                             message="This invite is not valid (used, expired or unknown).")
        if password != again:
            return _invite_page(ui, request, secret, *found,
                                error="the two passwords differ", status=400)
        try:
            user = await ui.run(lambda: ui.auth.users.accept(secret, password, code,
                                                             request.remote or ""))
        except BadRequest as e:
            return _invite_page(ui, request, secret, *found, error=e.message, status=400)
        return ui.render(request, "message.html", title="Account ready",
                         message=f"User {user} is ready: log in with the password and a "
                         "code from the authenticator.", link=f"{PREFIX}/login")

    r = ui.app.router
    r.add_get(f"{PREFIX}/login", login_form)
    r.add_post(f"{PREFIX}/login", login)
    r.add_post(f"{PREFIX}/logout", logout)
    r.add_get(f"{PREFIX}/invite/{{secret}}", invite_form)
    r.add_post(f"{PREFIX}/invite/{{secret}}", invite)


def _invite_page(ui: WebUI, request: web.Request, secret: str, user: str, seed: str, *,
                 error: str, status: int = 200) -> web.StreamResponse:
    return ui.render(request, "invite.html", status=status, invited=user, seed=seed,
                     uri=totp.otpauth_uri(seed, user, ui.auth.cluster),
                     action=f"{PREFIX}/invite/{secret}", error=error)
