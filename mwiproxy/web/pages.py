"""Status, Access → Roles, bots and join tokens. Each page checks the user's `rules`
(resource, verb) first; changes go through the auth API's own handlers, as the user,
so validation and audit events are the API's (`by` names the web user)."""

from __future__ import annotations

import functools
import shlex
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp import web

from mwiproxy.auth.errors import AuthError
from mwiproxy.auth.roles import Role, parse_roles
from mwiproxy.config.loader import ConfigError
from mwiproxy.web.app import PREFIX, redirect

if TYPE_CHECKING:
    from mwiproxy.web.app import WebUI

MAX_FIELD = 1024


def _text(form: Any, name: str, limit: int = MAX_FIELD) -> str:
    value = form.get(name, "")
    return value[:limit] if isinstance(value, str) else ""


def _csv(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def role_yaml(d: dict[str, Any]) -> str:
    return yaml.safe_dump(Role.from_dict(d).to_dict(), sort_keys=False,
                          default_flow_style=False)


def join_command(ui: WebUI, token: str) -> str:
    """The bot's first start, complete (what `mwictl bots add` prints)."""
    cas = ui.auth.cas
    pins = list(cas.host_pins) or [cas.host_pin]
    return shlex.join(["mwibot", "start", "identity", f"--proxy-server={ui.auth.public_addr}",
                       "--join-method=token", f"--token={token}",
                       *(f"--ca-pin={p}" for p in pins),
                       "--storage=./mwibot-data", "--destination=./mwibot-id"])


def add_routes(ui: WebUI) -> None:
    async def status(request: web.Request) -> web.StreamResponse:
        info = await ui.run(lambda: ui.call(request, "ping"))
        return ui.render(request, "status.html", info=info)

    # -- roles ---------------------------------------------------------------------------
    async def roles(request: web.Request) -> web.StreamResponse:
        ui.require(request, "role", "list")
        stored = await ui.run(ui.auth.storage.list_roles)
        rows = [Role.from_dict(d) for d in stored]
        return ui.render(request, "roles.html", roles=rows,
                         can_create=ui.can(request, "role", "create"),
                         can_delete=ui.can(request, "role", "delete"))

    async def role_new(request: web.Request) -> web.StreamResponse:
        ui.require(request, "role", "create")
        return ui.render(request, "role_edit.html", name="", text="", error="")

    async def role_edit(request: web.Request) -> web.StreamResponse:
        ui.require(request, "role", "read")
        name = request.match_info["name"]
        d = await ui.run(lambda: ui.auth.storage.get_role(name))
        if d is None:
            raise web.HTTPNotFound(text=f"role {name!r} not found")
        return ui.render(request, "role_edit.html", name=name, text=role_yaml(d), error="",
                         can_save=ui.can(request, "role", "update"))

    async def role_save(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        text = _text(form, "yaml", 128 * 1024)
        editing = _text(form, "name")
        ui.require(request, "role", "update" if editing else "create")
        error = ""
        try:
            parsed = parse_roles(text, "role.yaml")
            for role in parsed:
                if role.name != editing:
                    ui.require(request, "role", "create")
                    exists = await ui.run(functools.partial(ui.auth.storage.get_role,
                                                            role.name))
                    if exists is not None:
                        raise ConfigError(f"role {role.name!r} already exists: edit it "
                                          "from the list instead")
            await ui.run(lambda: ui.call(request, "create_roles", yaml=text,
                                         filename="role.yaml", force=bool(editing)))
        except ConfigError as e:
            error = str(e)
        except AuthError as e:
            error = e.message
        if error:
            return ui.render(request, "role_edit.html", status=400, name=editing, text=text,
                             error=error, can_save=True)
        redirect(f"{PREFIX}/roles")

    async def role_delete(request: web.Request) -> web.StreamResponse:
        ui.require(request, "role", "delete")
        name = request.match_info["name"]
        return await ui.change(request, "Roles", "roles", "delete_role", name=name)

    # -- bots ----------------------------------------------------------------------------
    async def bots(request: web.Request) -> web.StreamResponse:
        ui.require(request, "bot", "list")
        rows = await ui.run(lambda: ui.call(request, "bots_ls"))
        return ui.render(request, "bots.html", bots=rows, added=None, error="",
                         can_create=ui.can(request, "bot", "create"),
                         can_update=ui.can(request, "bot", "update"),
                         can_delete=ui.can(request, "bot", "delete"))

    async def bot_add(request: web.Request) -> web.StreamResponse:
        ui.require(request, "bot", "create")
        form = await request.post()
        name, role_list = _text(form, "name"), _csv(_text(form, "roles"))
        try:
            res = await ui.run(lambda: ui.call(request, "bots_add", name=name,
                                               roles=role_list))
        except AuthError as e:
            return ui.render(request, "message.html", status=400, title="Bots",
                             message=e.message, link=f"{PREFIX}/bots")
        return ui.render(request, "bot_added.html", bot=res["bot"], token=res["token"],
                         expires=res["token_expires"], command=join_command(ui, res["token"]))

    async def bot_update(request: web.Request) -> web.StreamResponse:
        ui.require(request, "bot", "update")
        form = await request.post()
        name = request.match_info["name"]
        return await ui.change(request, "Bots", "bots", "bots_update", name=name,
                               set_roles=_csv(_text(form, "roles")))

    async def bot_delete(request: web.Request) -> web.StreamResponse:
        ui.require(request, "bot", "delete")
        name = request.match_info["name"]
        return await ui.change(request, "Bots", "bots", "bots_rm", name=name)

    # -- join tokens ---------------------------------------------------------------------
    async def tokens(request: web.Request) -> web.StreamResponse:
        ui.require(request, "token", "list")
        rows = await ui.run(lambda: ui.call(request, "tokens_ls"))
        return ui.render(request, "tokens.html", tokens=rows, added=None,
                         can_create=ui.can(request, "token", "create"),
                         can_delete=ui.can(request, "token", "delete"))

    async def token_add(request: web.Request) -> web.StreamResponse:
        ui.require(request, "token", "create")
        form = await request.post()
        kind, bot = _text(form, "type") or "bot", _text(form, "bot_name")
        try:
            res = await ui.run(lambda: ui.call(request, "tokens_add", type=kind,
                                               bot_name=bot, ttl=_text(form, "ttl") or "1h"))
        except AuthError as e:
            return ui.render(request, "message.html", status=400, title="Join tokens",
                             message=e.message, link=f"{PREFIX}/tokens")
        rows = await ui.run(lambda: ui.call(request, "tokens_ls"))
        command = join_command(ui, res["token"]) if kind == "bot" else ""
        return ui.render(request, "tokens.html", tokens=rows, added=res, command=command,
                         can_create=True, can_delete=ui.can(request, "token", "delete"))

    async def token_delete(request: web.Request) -> web.StreamResponse:
        ui.require(request, "token", "delete")
        token_id = request.match_info["id"]
        return await ui.change(request, "Join tokens", "tokens", "tokens_rm", token=token_id)

    r = ui.app.router
    r.add_get(f"{PREFIX}/", status)
    r.add_get(f"{PREFIX}/roles", roles)
    r.add_get(f"{PREFIX}/roles/new", role_new)
    r.add_post(f"{PREFIX}/roles", role_save)
    r.add_get(f"{PREFIX}/roles/{{name}}", role_edit)
    r.add_post(f"{PREFIX}/roles/{{name}}/delete", role_delete)
    r.add_get(f"{PREFIX}/bots", bots)
    r.add_post(f"{PREFIX}/bots", bot_add)
    r.add_post(f"{PREFIX}/bots/{{name}}/roles", bot_update)
    r.add_post(f"{PREFIX}/bots/{{name}}/delete", bot_delete)
    r.add_get(f"{PREFIX}/tokens", tokens)
    r.add_post(f"{PREFIX}/tokens", token_add)
    r.add_post(f"{PREFIX}/tokens/{{id}}/delete", token_delete)
