"""What each `mwictl` command does: one auth API call, then print."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from mwiproxy.auth.client import AuthClient, first_answering
from mwiproxy.cli import mwictl_output as out
from mwiproxy.cli import mwictl_rotate, mwictl_sessions, mwictl_users
from mwiproxy.cli.common import table
from mwiproxy.config.cluster import default_data_dir
from mwiproxy.config.durations import parse_duration
from mwiproxy.identity.authorities import generate_private_key, private_key_pem, public_key_pem
from mwiproxy.identity.identityfile import read_identity_file
from mwiproxy.wire.addr import split_address_list
from mwiproxy.wire.failover import FailoverOrder

DEFAULT_ADDR = "127.0.0.1:3080"


def connect(args: argparse.Namespace) -> AuthClient:
    data_dir = Path(args.data_dir or default_data_dir())
    ident_path = args.identity or str(data_dir / "admin" / "identity")
    if not os.path.exists(ident_path):
        raise ValueError(f"no identity at {ident_path}: start the cluster first "
                         "(mwiproxy start) or pass -i FILE")
    addr = ",".join(args.auth_server)
    if not addr:
        info = data_dir / "cluster.json"
        addr = json.loads(info.read_text())["proxy_addr"] if info.exists() else DEFAULT_ADDR
    ident = read_identity_file(ident_path)
    try:
        order = FailoverOrder(split_address_list(addr))
    except ValueError as e:
        raise ValueError(f"--auth-server: {e}") from None
    # several cluster processes: the first that answers serves every call of this command
    return first_answering(order, lambda a: AuthClient.from_identity(a, ident).connect())


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _csv(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def _dump(obj: Any, fmt: str) -> None:
    """`get`: JSON, or YAML with one document per resource (what `create -f` reads)."""
    if fmt == "json":
        out.dump(obj, "json")
    else:
        docs = out.machine(obj if isinstance(obj, list) else [obj])
        print(yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False).rstrip())


def cmd_status(c: AuthClient, a: argparse.Namespace) -> int:
    s = c.call("status")
    if a.format != "text":
        out.dump({**s, "rotation": c.call("rotation_status")}, a.format)
        return 0
    pins = ", ".join(s.get("host_ca_pins") or [s["host_ca_pin"]])  # two while host CA rotates
    print(f"Cluster    {s['cluster_name']}\nVersion    {s['version']}\n"
          f"CA pin     {pins}\nProxy      {s['public_addr']}\n"
          f"Bots       {s['bots']}\nRoles      {s['roles']}\nDatabases  {s['databases']}\n"
          f"Locks      {s['locks']}\nAgents     {s.get('agents', 0)}")
    for line in mwictl_rotate.status_lines(c):
        print(line)
    return 0


def cmd_create(c: AuthClient, a: argparse.Namespace) -> int:
    text = Path(a.filename).read_text()
    res = c.call("create_roles", yaml=text, filename=a.filename, force=a.force)
    for name in res["created"]:
        print(f'role "{name}" has been {"updated" if a.force else "created"}')
    return 0


def cmd_get(c: AuthClient, a: argparse.Namespace) -> int:
    res = a.resource
    if res in ("roles", "role"):
        _dump(c.call("get_roles"), a.format)
    elif res.startswith("role/"):
        _dump(c.call("get_role", name=res.split("/", 1)[1]), a.format)
    elif res in ("bots", "bot"):
        _dump(c.call("bots_ls"), a.format)
    elif res in ("tokens", "token"):
        _dump(c.call("tokens_ls"), a.format)
    elif res in ("db", "dbs", "databases"):
        _dump(c.call("db_ls"), a.format)
    elif res in ("agents", "agent"):
        _dump(c.call("agents_ls"), a.format)
    else:
        raise ValueError(f"unknown resource {res!r}: use roles, role/NAME, bots, tokens, db "
                         "or agents")
    return 0


def cmd_rm(c: AuthClient, a: argparse.Namespace) -> int:
    kind, _, name = a.resource.partition("/")
    if kind != "role" or not name:
        raise ValueError(f"cannot remove {a.resource!r}: use role/NAME")
    c.call("delete_role", name=name)
    print(f'role "{name}" has been deleted')
    return 0


def cmd_db(c: AuthClient, a: argparse.Namespace) -> int:
    dbs = c.call("db_ls")
    if a.format != "text":
        out.dump(dbs, a.format)
        return 0
    rows = [(d["name"], d["protocol"], d["uri"],
             ",".join(f"{k}={v}" for k, v in sorted(d["labels"].items())),
             ",".join(d.get("agents", []))) for d in dbs]
    print(table(["Name", "Protocol", "URI", "Labels", "Agent"], rows))
    return 0


def cmd_bots(c: AuthClient, a: argparse.Namespace) -> int:
    if a.sub == "add":
        res = c.call("bots_add", name=a.name, roles=_csv(a.roles), token_ttl=a.ttl)
        mins = int(round((res["token_expires"] - time.time()) / 60))
        print(f"The bot token: {res['token']}\nThis token will expire in {mins} minutes.\n\n"
              "Run this on the new bot node (it joins and keeps the bot's identity "
              "renewed in ./mwibot-id):\n"
              f"> {_join_command(c, res['token'])}\n\n"
              "For database credentials, once the bot has a role that allows them, use "
              "`mwibot start database … --service=SERVICE --database=DATABASE "
              "--username=USER` with the same flags, or put the token in tbot.yaml's "
              "onboarding.token and run mwibot start -c tbot.yaml")
    elif a.sub == "update":
        res = c.call("bots_update", name=a.name, add_roles=_csv(a.add_roles),
                     remove_roles=_csv(a.remove_roles),
                     **({"set_roles": _csv(a.set_roles)} if a.set_roles is not None else {}))
        print(f'Bot "{a.name}" has been updated; roles: {", ".join(res["roles"]) or "(none)"}')
    elif a.sub == "ls":
        bots = c.call("bots_ls")
        if a.format != "text":
            out.dump(bots, a.format)
        else:
            print(table(["Bot", "User", "Roles", "Generation", "Last seen"],
                        [(b["name"], b["user"], ",".join(b["roles"]), b["generation"],
                          _when(b["last_seen"] or None)) for b in bots]))
    elif a.sub == "rm":
        c.call("bots_rm", name=a.name)
        print(f'Bot "{a.name}" has been deleted')
    return 0


def _pins(ping: dict[str, Any]) -> list[str]:
    return list(ping.get("host_ca_pins") or [ping["host_ca_pin"]])  # two while rotating


def _join_command(c: AuthClient, token: str) -> str:
    """The bot's first start, complete: pasted as printed it joins (the CA pin pins the
    cluster; state and identity go under the working directory)."""
    ping = c.call("ping")
    return shlex.join(["mwibot", "start", "identity", f"--proxy-server={ping['public_addr']}",
                       "--join-method=token", f"--token={token}",
                       *(f"--ca-pin={p}" for p in _pins(ping)),
                       "--storage=./mwibot-data", "--destination=./mwibot-id"])


def cmd_tokens(c: AuthClient, a: argparse.Namespace) -> int:
    if a.sub == "add":
        if a.type == "bot" and not a.bot_name:
            raise ValueError("--bot-name is needed for --type=bot")
        res = c.call("tokens_add", type=a.type, bot_name=a.bot_name or "", ttl=a.ttl)
        if a.format != "text":
            out.dump(res, a.format)
            return 0
        print(f"The invite token: {res['token']}\nID: {res['id']}\n"
              f"This token will expire at {_when(res['expires'])}.")
        if a.type == "db":
            ping = c.call("ping")
            print("\nRun this on the new database agent node:\n"
                  f"> mwiproxy start --roles=db --auth-server={ping['public_addr']} "
                  f"--token={res['token']} "
                  + "".join(f"--ca-pin={p} " for p in _pins(ping)) + "-c db.yaml")
    elif a.sub == "ls":
        toks = c.call("tokens_ls")
        if a.format != "text":
            out.dump(toks, a.format)
        else:
            print(table(["ID", "Type", "Bot", "Expires", "State"],
                        [(t["id"], t["type"], t["bot_name"], _when(t["expires"]),
                          "used" if t["used"] else "expired" if t["expired"] else "unused")
                         for t in toks]))
    elif a.sub == "rm":
        c.call("tokens_rm", token=a.token)
        print("Token has been deleted")
    return 0


def cmd_agents(c: AuthClient, a: argparse.Namespace) -> int:
    agents = c.call("agents_ls")
    if a.format != "text":
        out.dump(agents, a.format)
    else:
        print(table(["Host ID", "Hostname", "Address", "Databases", "Last heartbeat",
                     "Expires"],
                    [(ag["host_id"], ag["hostname"], ag["addr"], ",".join(ag["databases"]),
                      _when(ag["last_heartbeat"]), _when(ag["expires"])) for ag in agents]))
    return 0


def cmd_lock(c: AuthClient, a: argparse.Namespace) -> int:
    kind, target = ("bot", a.bot) if a.bot else ("role", a.role) if a.role else ("user", a.user)
    if a.ttl:
        parse_duration(a.ttl)
    lock = c.call("lock", target_kind=kind, target=target, message=a.message, ttl=a.ttl)
    print(f"Created a lock with ID {lock['id']} on {kind} {target!r}"
          f" (expires {_when(lock['expires'])})")
    return 0


def cmd_locks(c: AuthClient, a: argparse.Namespace) -> int:
    if a.sub == "rm":
        c.call("locks_rm", id=a.id)
        print(f"Lock {a.id} has been deleted")
        return 0
    locks = c.call("locks_ls")
    if a.format != "text":
        out.dump(locks, a.format)
    else:
        print(table(["ID", "Target", "Message", "Expires"],
                    [(lk["id"], f"{lk['target_kind']}:{lk['target']}", lk["message"],
                      _when(lk["expires"])) for lk in locks]))
    return 0


def _since(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return time.time() - parse_duration(value).total_seconds()
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"--since {value!r}: expected a duration like 1h or an RFC 3339 time"
                         ) from None


CHAIN_BROKEN_EXIT = 2  # 1 stays "could not ask" (connection, identity)


def _audit_verify(c: AuthClient, a: argparse.Namespace) -> int:
    """Walk the audit hash chain; exit 2 naming each break, 0 when it is intact."""
    r = c.call("audit_verify", expect_head=a.expect_head or "")
    if a.format != "text":
        out.dump(r, a.format)
        return 0 if r["intact"] else CHAIN_BROKEN_EXIT
    stream = sys.stderr if a.head else sys.stdout
    for b in r["breaks"]:
        seen = f" (reported at start by event {b['acknowledged_by']})" \
            if b["acknowledged_by"] else ""
        print(f"BROKEN at event {b['id']}: {b['reason']}: {b['detail']}{seen}", file=stream)
    for rep in r["reported"]:
        print(f"event {rep['event']}: a break at event(s) "
              f"{', '.join(map(str, rep['ids'])) or '?'} was found at an earlier start",
              file=stream)
    if a.head:
        print(r["head"])
    elif r["intact"]:
        print(f"{r['events']} events, chain intact, head {r['head']}")
    else:
        first = r["breaks"][0]["id"] if r["breaks"] else r["reported"][0]["event"]
        print(f"{r['events']} events, chain BROKEN (first at event {first}), "
              f"head {r['head']}")
    return 0 if r["intact"] else CHAIN_BROKEN_EXIT


def cmd_audit(c: AuthClient, a: argparse.Namespace) -> int:
    if a.action == "verify":
        return _audit_verify(c, a)
    if a.head or a.expect_head:
        raise ValueError("--head and --expect-head go with `mwictl audit verify`")
    session = {"session": a.session.strip().lower()} if a.session else {}
    if a.limit < 1 or (a.before is not None and a.before < 1):
        raise ValueError("--limit and --before take a positive number")
    events = c.audit_events(a.limit, before=a.before, since=_since(a.since), types=a.type,
                            **session)
    if a.format != "text":
        out.dump_lines(events, a.format)
        return 0
    for e in events:
        print(out.event_line(e))
    return 0


def cmd_auth(c: AuthClient, a: argparse.Namespace) -> int:
    if a.sub == "rotate":
        return mwictl_rotate.cmd_rotate(c, a)
    hosts = _csv(a.host)
    key = generate_private_key()
    res = c.call("sign_db_server", hosts=hosts, ttl=a.ttl,
                 public_key=public_key_pem(key.public_key()).decode())
    outputs = {f"{a.out}.key": private_key_pem(key), f"{a.out}.crt": res["cert"].encode(),
               f"{a.out}.cas": res["cas"].encode()}
    for path in outputs:
        if os.path.exists(path) and not a.overwrite:
            raise ValueError(f"{path} exists: pass --overwrite to replace it")
    from mwiproxy.identity.authorities import write_private

    for path, data in outputs.items():
        write_private(Path(path), data)
    print(f"Database credentials have been written to {', '.join(outputs)}.\n\n"
          f"To enable mutual TLS on your PostgreSQL server, add the following to its\n"
          f"postgresql.conf configuration file:\n\n"
          f"ssl = on\nssl_cert_file = '{os.path.abspath(a.out)}.crt'\n"
          f"ssl_key_file = '{os.path.abspath(a.out)}.key'\n"
          f"ssl_ca_file = '{os.path.abspath(a.out)}.cas'\n\n"
          "and to pg_hba.conf:\n\nhostssl all all 127.0.0.1/32 cert\n")
    return 0


COMMANDS = {"status": cmd_status, "create": cmd_create, "get": cmd_get, "rm": cmd_rm,
            "db": cmd_db, "bots": cmd_bots, "tokens": cmd_tokens, "lock": cmd_lock,
            "locks": cmd_locks, "audit": cmd_audit, "auth": cmd_auth, "agents": cmd_agents,
            "sessions": mwictl_sessions.cmd_sessions, "users": mwictl_users.cmd_users}


def dispatch(args: argparse.Namespace) -> int:
    with connect(args) as client:
        return COMMANDS[args.command](client, args)
