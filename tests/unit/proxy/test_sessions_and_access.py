from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest

from mwiproxy.auth.errors import AccessDenied
from mwiproxy.auth.storage.base import LockRecord, StorageUnavailable
from mwiproxy.identity.certs import DatabaseRoute, Identity
from mwiproxy.proxy.access import NO_IDENTITY, Refusal, authorize
from mwiproxy.proxy.sessions import REASON_EXPIRED, REASON_LOCKED, Session, SessionRegistry
from mwiproxy.wire.postgres import CancelKey

ROUTE = DatabaseRoute("example-server", "postgres", "alice", "example-db")


def _ident(bot: str = "example", expires_in: float = 3600, route=ROUTE) -> Identity:  # type: ignore[no-untyped-def]
    return Identity(user=f"bot-{bot}", roles=("example-role",), bot_name=bot, route=route,
                    expires=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires_in))


def _lock(kind: str, target: str) -> LockRecord:
    return LockRecord(lock_id="l1", target_kind=kind, target=target, message="", expires=None,
                      created=0.0)


def _session(ident: Identity, cuts: list[str]) -> Session:
    return Session(ident, "example-server", "alice", "example-db", "remote",
                   roles=("example-role",), cut=lambda reason, msg: cuts.append(reason))


def test_sessions_have_an_audit_id_unique_beyond_this_process():
    ident = Identity("bot-x", bot_name="x")
    ids = [_session(ident, []).audit_id for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and uuid.UUID(hex=i).version == 4 for i in ids)
    # the per-process counter stays for the log lines
    first, second = _session(ident, []), _session(ident, [])
    assert second.session_id == first.session_id + 1


def test_lock_ends_only_matching_sessions_and_cancel_keys_are_indexed():
    async def main() -> None:
        reg, cuts_a, cuts_b = SessionRegistry(), [], []
        a, b = _session(_ident("a"), cuts_a), _session(_ident("b"), cuts_b)
        reg.add(a)
        reg.add(b)
        reg.set_cancel_key(a, CancelKey(1, 2))
        assert reg.by_cancel_key(CancelKey(1, 2)) is a
        assert reg.by_cancel_key(CancelKey(1, 3)) is None
        reg.on_lock(_lock("bot", "a"))
        assert cuts_a == [REASON_LOCKED] and cuts_b == []
        reg.on_lock(_lock("role", "example-role"))
        assert cuts_b == [REASON_LOCKED]
        reg.remove(a)
        assert reg.by_cancel_key(CancelKey(1, 2)) is None and len(reg) == 1

    asyncio.run(main())


def test_session_closes_at_certificate_expiry():
    async def main() -> list[str]:
        reg, cuts = SessionRegistry(), []
        reg.add(_session(_ident(expires_in=0.1), cuts))
        await asyncio.sleep(0.3)
        return cuts

    assert asyncio.run(main()) == [REASON_EXPIRED]


def test_roles_may_keep_sessions_past_certificate_expiry():
    async def main() -> list[str]:
        reg, cuts = SessionRegistry(), []
        session = _session(_ident(expires_in=0.1), cuts)
        session.disconnect_at_expiry = False
        reg.add(session)
        await asyncio.sleep(0.3)
        return cuts

    assert asyncio.run(main()) == []


@pytest.mark.parametrize(("settings", "expected"), [
    ([], True), ([None], True), ([False], False), ([False, None], False),
    ([False, True], True), ([True], True),
], ids=["no-roles", "unset", "opt-out", "opt-out-and-unset", "any-true-wins", "true"])
def test_disconnect_at_expiry_from_role_options(settings, expected):
    from mwiproxy.auth.roles import Role
    from mwiproxy.proxy.access import disconnect_at_expiry
    roles = []
    for i, v in enumerate(settings):
        role = Role.from_dict({"kind": "role", "version": "v7", "metadata": {"name": f"r{i}"},
                               "spec": {"allow": {}}})
        role.options.disconnect_expired_cert = v
        roles.append(role)
    assert disconnect_at_expiry(roles) is expected


class FakeAuth:
    def __init__(self, deny: str = "", storage_down: bool = False) -> None:
        self.deny = deny
        self.storage_down = storage_down
        self.asked: list[DatabaseRoute] = []

    def check_database(self, caller: Identity, route: DatabaseRoute
                       ) -> tuple[list[str], list[object]]:
        self.asked.append(route)
        if self.storage_down:
            raise StorageUnavailable("the connection to the PostgreSQL storage was lost")
        if self.deny:
            raise AccessDenied(self.deny)
        return ["example-role"], []  # no role options: sessions end at certificate expiry


def _authorize(caller, auth=None, user="alice", db="example-db"):  # type: ignore[no-untyped-def]
    return authorize(auth or FakeAuth(), caller, db_user=user, db_name=db,  # type: ignore[arg-type]
                     protocols=("postgres",), served={"example-server"})


@pytest.mark.parametrize("caller, user, db, reason", [
    (None, "alice", "example-db", NO_IDENTITY),
    (_ident(route=None), "alice", "example-db", "not a database certificate"),
    (_ident(route=DatabaseRoute("example-server", "mysql")), "alice", "x", "mysql database"),
    (_ident(route=DatabaseRoute("other", "postgres")), "alice", "x", "not served"),
    (_ident(expires_in=-5), "alice", "example-db", "expired at"),
    (_ident(), "bob", "example-db", 'for database user "alice", not "bob"'),
    (_ident(), "alice", "postgres", 'for database "example-db", not "postgres"'),
])
def test_refusals_say_why(caller, user, db, reason):
    with pytest.raises(Refusal) as err:
        _authorize(caller, user=user, db=db)
    assert reason in err.value.reason
    assert err.value.message.startswith("access to db denied: ")


def test_rbac_runs_with_the_startup_user_and_database():
    auth = FakeAuth()
    grant = _authorize(_ident(), auth)
    assert auth.asked == [ROUTE] and grant.roles == ("example-role",)
    with pytest.raises(Refusal, match='user "alice" is not allowed by any role'):
        _authorize(_ident(), FakeAuth(deny='user "alice" is not allowed by any role'))


def test_a_storage_out_of_reach_refuses_saying_so():
    with pytest.raises(Refusal) as err:
        _authorize(_ident(), FakeAuth(storage_down=True))
    assert err.value.code == "other"
    assert err.value.message == ("access to db denied: the cluster cannot check access now: "
                                 "the connection to the PostgreSQL storage was lost")


@pytest.mark.parametrize("remote", [False, True], ids=["sqlite-inline", "postgres-thread"])
def test_the_session_start_check_leaves_the_loop_only_for_remote_storage(remote):
    import threading
    from types import SimpleNamespace

    from mwiproxy.proxy.access import check_policy_off_loop

    class ThreadNoting(FakeAuth):
        def check_database(self, caller, route):  # type: ignore[no-untyped-def]
            self.thread = threading.current_thread()
            return super().check_database(caller, route)

    auth = ThreadNoting()
    auth.storage = SimpleNamespace(remote=remote)  # type: ignore[attr-defined]
    grant = asyncio.run(check_policy_off_loop(auth, _ident(), ROUTE))  # type: ignore[arg-type]
    assert grant.roles == ("example-role",)
    assert (auth.thread is threading.main_thread()) is not remote
