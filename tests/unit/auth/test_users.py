"""Web users (auth/users.py) and TOTP (auth/totp.py): invites, activation, login with
its rate limits, sessions with idle and absolute expiry. The service tests run on both
storage backends; the storage contract of users and tickets too."""

from __future__ import annotations

import pytest

from mwiproxy.auth import totp, users
from mwiproxy.auth.errors import AlreadyExists, BadRequest
from mwiproxy.auth.users import LoginRefused, ticket_key
from tests._testbase.pgstore import BACKENDS

on_both_backends = pytest.mark.parametrize("svc", BACKENDS, indirect=True)
PASSWORD = "correct horse battery staple"
NOW = 1_800_000_000.0


def test_totp_matches_rfc6238_vectors():
    # RFC 6238 appendix B, SHA-1, the 20-byte ASCII seed; our codes are its 6 low digits
    seed = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # base32 of "12345678901234567890"
    for t, eight in ((59, "94287082"), (1111111109, "07081804"), (1234567890, "89005924"),
                     (2000000000, "69279037"), (20000000000, "65353130")):
        assert totp.code_at(seed, t) == eight[-6:]


def test_totp_verify_window_and_single_use():
    seed = totp.new_secret()
    step = totp.verify(seed, totp.code_at(seed, NOW - 30), NOW)
    assert step == int(NOW) // 30 - 1  # one step of drift is accepted
    assert totp.verify(seed, totp.code_at(seed, NOW - 90), NOW) is None
    assert totp.verify(seed, totp.code_at(seed, NOW), NOW, not_before=int(NOW) // 30) is None
    assert totp.verify(seed, "12345", NOW) is None and totp.verify(seed, "abcdef", NOW) is None
    uri = totp.otpauth_uri(seed, "ann", "example.local")
    assert uri.startswith("otpauth://totp/example.local%3Aann?secret=" + seed)


def test_storage_users_and_tickets(storage):
    assert storage.put_user("ann", {"roles": ["a"]}, overwrite=False)
    assert not storage.put_user("ann", {"roles": ["b"]}, overwrite=False)
    assert storage.put_user("ann", {"roles": ["c"]}, overwrite=True)
    assert storage.get_user("ann") == {"roles": ["c"]}
    storage.put_ticket("k1", "ann", {"kind": "session"}, NOW)
    storage.put_ticket("k2", "ann", {"kind": "invite"}, NOW + 10)
    assert storage.get_ticket("k1") == ("ann", {"kind": "session"}, NOW)
    assert storage.take_ticket("k1") == ("ann", {"kind": "session"}, NOW)
    assert storage.take_ticket("k1") is None  # once
    assert storage.delete_tickets("", expired_at=NOW + 1) == 0
    assert storage.list_users() == [("ann", {"roles": ["c"]})]
    assert storage.delete_user("ann") and not storage.delete_user("ann")
    assert storage.get_ticket("k2") is None  # the user's tickets went with them


def _activate(svc, name="ann", roles=("example-role",)):
    secret, _ = svc.users.add(name, list(roles), by="admin")
    _, seed = svc.users.invite(secret)
    svc.users.accept(secret, PASSWORD, totp.code_at(seed, svc.clock_obj.now))
    return seed


@on_both_backends
def test_invite_is_single_use_short_lived_and_stored_hashed(svc):
    secret, expires = svc.users.add("ann", ["example-role"], by="admin")
    assert expires == svc.clock_obj.now + users.INVITE_TTL
    assert svc.storage.get_ticket(secret) is None  # only its hash is stored
    assert svc.storage.get_ticket(ticket_key(secret)) is not None
    with pytest.raises(AlreadyExists):
        svc.users.add("ann", [], by="admin")
    _, seed = svc.users.invite(secret)
    with pytest.raises(BadRequest, match="code does not match"):
        svc.users.accept(secret, PASSWORD, "000000" if totp.code_at(seed, svc.clock_obj.now)
                         != "000000" else "111111")
    with pytest.raises(BadRequest, match="12 to"):
        svc.users.accept(secret, "short", totp.code_at(seed, svc.clock_obj.now))
    assert svc.users.accept(secret, PASSWORD, totp.code_at(seed, svc.clock_obj.now)) == "ann"
    with pytest.raises(BadRequest, match="not valid"):
        svc.users.accept(secret, PASSWORD, totp.code_at(seed, svc.clock_obj.now))
    body = svc.storage.get_user("ann")
    assert body["state"] == "active" and body["password"].startswith("scrypt$32768$8$1$")
    assert PASSWORD not in str(body)
    late, _ = svc.users.add("bob", [], by="admin")
    svc.clock_obj.now += users.INVITE_TTL + 1
    assert svc.users.invite(late) is None
    types = [e.type for e in svc.audit.query()]
    assert users.USER_CREATE in types and users.USER_ACTIVATE in types


@on_both_backends
def test_login_session_expiry_and_code_reuse(svc):
    seed = _activate(svc)
    clock = svc.clock_obj
    clock.now += 31  # the activation's step is used up: the next one
    code = totp.code_at(seed, clock.now)
    cookie, session = svc.users.login("ann", PASSWORD, code, "10.0.0.1")
    assert len(cookie) >= 43 and session.roles == ["example-role"]
    assert svc.storage.get_ticket(ticket_key(cookie))[1]["kind"] == "session"
    with pytest.raises(LoginRefused):  # the same code twice
        svc.users.login("ann", PASSWORD, code, "10.0.0.1")
    assert svc.users.session(cookie).user == "ann"
    clock.now += users.SESSION_IDLE - 5
    assert svc.users.session(cookie) is not None  # seen: the idle clock restarts
    clock.now += users.SESSION_IDLE - 5
    assert svc.users.session(cookie) is not None
    clock.now += users.SESSION_IDLE + 1
    assert svc.users.session(cookie) is None  # idle too long
    clock.now += 31
    cookie, _ = svc.users.login("ann", PASSWORD, totp.code_at(seed, clock.now), "10.0.0.1")
    for _ in range(int(users.SESSION_ABSOLUTE // (users.SESSION_IDLE / 2))):
        clock.now += users.SESSION_IDLE / 2
        if svc.users.session(cookie) is None:
            break
    assert svc.users.session(cookie) is None  # the absolute expiry
    svc.users.remove("ann", by="admin")
    assert svc.storage.get_user("ann") is None


def test_login_rate_limited_per_user_and_per_remote(svc):
    seed = _activate(svc)
    clock = svc.clock_obj
    for _ in range(users.FAILURES_PER_USER):
        with pytest.raises(LoginRefused, match="wrong"):
            svc.users.login("ann", "wrong password!", "000000", "10.0.0.2")
    clock.now += 31
    with pytest.raises(LoginRefused, match="too many"):  # right answers now: still refused
        svc.users.login("ann", PASSWORD, totp.code_at(seed, clock.now), "10.0.0.3")
    for i in range(users.FAILURES_PER_REMOTE):
        with pytest.raises(LoginRefused):
            svc.users.login(f"nobody{i}", "x" * 12, "000000", "10.0.0.9")
    with pytest.raises(LoginRefused, match="too many"):
        svc.users.login("someone-else", "x" * 12, "000000", "10.0.0.9")
    clock.now += users.WINDOW + 1
    svc.users.login("ann", PASSWORD, totp.code_at(seed, clock.now), "10.0.0.3")
    events = svc.audit.query()
    assert any(e.type == users.LOGIN_LIMITED and e.fields["user"] == "ann" for e in events)
    failed = [e for e in events if e.type == users.LOGIN_FAILED]
    assert failed[0].fields["reason"] == "wrong password"
    assert any(e.fields["reason"] == "unknown or inactive user" for e in failed)
