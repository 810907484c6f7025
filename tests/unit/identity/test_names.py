"""Names are checked whole (issue 9): `example\\n` is not `example`, anywhere it enters.

Property tests per kind of name, then each entry point refusing the issue's attacks.
"""

from __future__ import annotations

import datetime as dt
import pathlib
import textwrap
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy.auth import audit
from mwiproxy.auth.errors import BadRequest
from mwiproxy.auth.roles import parse_roles, parse_trait_template
from mwiproxy.config.cluster import load_cluster_config
from mwiproxy.config.loader import ConfigError
from mwiproxy.identity import names, oids
from mwiproxy.identity.authorities import generate_private_key, public_key_pem
from mwiproxy.identity.certs import DatabaseRoute, Identity
from mwiproxy.proxy.access import Refusal, authorize
from tests._testbase.authkit import guide_service
from tests._testbase.fixtures import GUIDE_ROLE

README = pathlib.Path(__file__).parents[3] / "README.md"
ADMIN = Identity(user="admin", usage=(oids.USAGE_ADMIN,))
KIND_IDS = [k.key for k in names.KINDS]
# every C0 control, DEL, C1 controls, and a few invisible ones that spoof a display
BAD_CHARS = [chr(c) for c in range(0x20)] + ["\x7f", "\x85", "\x9b", "\u2028", "\u202e",
                                             "\u200b", "\ufeff"]


def _size(kind: names.NameKind, value: str) -> int:
    return len(value.encode()) if kind.unit == "bytes" else len(value)


# Printable characters as str.isprintable() sees them: no C* (control, format, surrogate,
# private, unassigned), no line/paragraph separators, and of the spaces only ' '.
_GRAPHIC = st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))
_PRINTABLE = _GRAPHIC | st.just(" ")


def _cut(kind: names.NameKind, value: str, size: int) -> str:
    """The longest prefix of `value` of at most `size` (characters or UTF-8 bytes)."""
    if kind.unit == "characters":
        return value[:size]
    return value.encode()[:size].decode(errors="ignore")


def _valid(kind: names.NameKind) -> st.SearchStrategy[str]:
    """Any string of the kind's documented alphabet and length."""
    if kind.first == ".":  # any printable character
        text = st.text(_PRINTABLE, min_size=1, max_size=kind.max_len)
    elif kind is names.AGENT_HOSTNAME:
        text = st.text(_GRAPHIC, min_size=1, max_size=kind.max_len)
    else:
        return st.from_regex(f"{kind.first}{kind.rest}{{{kind.min_len - 1},"
                             f"{kind.max_len - 1}}}", fullmatch=True)
    return text.filter(str.isprintable).map(lambda s: _cut(kind, s, kind.max_len))


@pytest.mark.parametrize("kind", names.KINDS, ids=KIND_IDS)
@settings(max_examples=150)
@given(data=st.data())
def test_every_name_of_the_alphabet_is_accepted_unchanged(kind, data):
    value = data.draw(_valid(kind))
    assert names.check(kind, value) == value
    assert kind.pattern.fullmatch(value)


@pytest.mark.parametrize("kind", names.KINDS, ids=KIND_IDS)
@settings(max_examples=150)
@given(data=st.data())
def test_a_control_character_anywhere_is_refused(kind, data):
    value = data.draw(_valid(kind))
    bad = data.draw(st.sampled_from(BAD_CHARS))
    at = data.draw(st.integers(0, len(value)))
    spoiled = value[:at] + bad + value[at:]
    with pytest.raises(names.InvalidName) as err:
        names.check(kind, spoiled)
    message = str(err.value)
    assert err.value.kind is kind and message.startswith(f"invalid {kind.title} ")
    assert f"U+{ord(bad):04X} at position {at} is not allowed" in message
    assert bad not in message  # shown escaped, never raw
    if not kind.secret and at < names.SHOWN_CHARS:
        assert repr(bad)[1:-1] in message


@pytest.mark.parametrize("kind", names.KINDS, ids=KIND_IDS)
@settings(max_examples=50)
@given(data=st.data())
def test_over_long_names_are_refused(kind, data):
    name, extra = data.draw(_valid(kind)), data.draw(st.integers(1, 40))
    # repeated and cut: still the alphabet (+3: a byte cut may drop a 4-byte character)
    value = _cut(kind, name * (kind.max_len + extra), kind.max_len + extra + 3)
    assert _size(kind, value) > kind.max_len
    with pytest.raises(names.InvalidName, match=f"{_size(kind, value)} {kind.unit} long"):
        names.check(kind, value)


@pytest.mark.parametrize("kind", names.KINDS, ids=KIND_IDS)
@settings(max_examples=50)
@given(data=st.data())
def test_a_trailing_newline_is_refused(kind, data):
    value = data.draw(_valid(kind))
    for tail in ("\n", "\r\n", "\x00"):
        with pytest.raises(names.InvalidName, match="control character U\\+00"):
            names.check(kind, value + tail)


@pytest.mark.parametrize("kind", names.KINDS, ids=KIND_IDS)
def test_empty_and_non_strings_are_refused(kind):
    with pytest.raises(names.InvalidName, match="must not be empty"):
        names.check(kind, "")
    with pytest.raises(names.InvalidName, match="must be a string, not int"):
        names.check(kind, 7)


@pytest.mark.parametrize(("check", "value"), [
    (names.bot_name, "example"), (names.bot_name, "a" * 60), (names.bot_name, "ci.bot_1-x"),
    (names.role_name, "example-role"), (names.role_name, "Db"), (names.role_name, "bot-example"),
    (names.role_name, "alice@example.com"),
    (names.user_name, "bot-example"), (names.user_name, f"agent.{uuid.uuid4()}"),
    (names.user_name, "admin"), (names.user_name, "proxy.example.local"),
    (names.join_token, "0123456789abcdef" * 2), (names.token_id, "0123456789ab"),
    (names.token_id, "f" * 64), (names.database_service, "example-server"),
    (names.database_service, "orders"), (names.label_key, "env"), (names.label_key, "*"),
    (names.label_key, "teleport.dev/origin"), (names.label_key, "aws:region"),
    (names.db_user, "alice"), (names.db_user, "{{internal.db_users}}"),
    (names.db_user, "Mixed Case user"), (names.db_name, "example-db"),
    (names.db_name, "données"), (names.agent_hostname, "db-node-1"),
])
def test_names_in_use_today_stay_valid(check, value):
    assert check(value) == value


@pytest.mark.parametrize(("check", "value", "why"), [
    (names.bot_name, "Example", "'E' at position 0 is not a valid name character"),
    (names.bot_name, "-example", "may not start with '-'"),
    (names.bot_name, "a" * 61, "61 characters long"),
    (names.role_name, "bad name", "' ' at position 3"),
    (names.database_service, "Bad_Name", "not a valid name"),
    (names.label_key, "env=dev", "'=' at position 3"),
    (names.token_id, "abc", "only 3 characters long"),
    (names.token_id, "0123456789aG", "'G' at position 11"),
    (names.agent_hostname, "db node", "' ' at position 2"),
    (names.db_user, "x\u202eroot", "non-printable character U+202E at position 1"),
])
def test_refusals_say_why_and_what_is_allowed(check, value, why):
    with pytest.raises(names.InvalidName) as err:
        check(value)
    assert why in err.value.reason
    assert f"(use {err.value.kind.allowed}; {err.value.kind.length()})" in str(err.value)


def test_postgres_names_stop_where_the_server_would_truncate():
    # PostgreSQL cuts a 64-byte user to 63: the checked name and the used one would differ
    for protocol in ("postgres", "cockroachdb"):
        assert names.db_user("é" * 31 + "a", protocol)  # 63 bytes
        with pytest.raises(names.InvalidName, match="64 bytes long.*at most 63 bytes"):
            names.db_user("é" * 32, protocol)
        with pytest.raises(names.InvalidName, match="64 bytes long"):
            names.db_name("d" * 64, protocol)
    assert names.db_user("u" * 64, "mysql") and names.db_name("d" * 255)


def test_errors_cut_long_values_and_hide_secrets():
    with pytest.raises(names.InvalidName) as err:
        names.bot_name("x" * 10_000 + "\n")
    assert len(str(err.value)) < 400 and "(10001 characters)" in str(err.value)
    secret = "0123456789abcdef" * 2
    with pytest.raises(names.InvalidName) as err:
        names.join_token(secret + "\n")
    assert secret not in str(err.value) and "(not shown)" in str(err.value)


def test_lock_targets_are_checked_as_their_kind():
    assert names.lock_target("user", "bot-example") == "bot-example"
    with pytest.raises(names.InvalidName, match="invalid bot name 'Example'"):
        names.lock_target("bot", "Example")  # bots are lower-case: such a lock stops nothing
    with pytest.raises(ValueError, match="one of bot, role, user"):
        names.lock_target("group", "x")


def test_readme_lists_the_names_table():
    assert names.markdown_table() in README.read_text()


# ---- the entry points ----------------------------------------------------------------

@pytest.fixture
def svc(tmp_path):
    s = guide_service(tmp_path)
    yield s
    s.audit.close()
    s.storage.close()


def _pub() -> str:
    return public_key_pem(generate_private_key().public_key()).decode()


def test_bots_add_refuses_a_trailing_newline(svc):
    with pytest.raises(BadRequest, match=r"invalid bot name 'example\\n'"):
        svc.call("bots_add", ADMIN, {"name": "example\n", "roles": ["example-role"]})
    assert svc.call("bots_ls", ADMIN, {}) == []
    svc.call("bots_add", ADMIN, {"name": "example", "roles": []})
    with pytest.raises(BadRequest, match="invalid bot name"):
        svc.call("tokens_add", ADMIN, {"bot_name": "example\n"})
    with pytest.raises(BadRequest, match="invalid token id"):
        svc.call("tokens_rm", ADMIN, {"token": "0123456789ab\n"})
    with pytest.raises(BadRequest, match=r"invalid join token \(not shown\)"):
        svc.call("tokens_rm", ADMIN, {"token": "0123456789abcdef0123456789abcd\n\n"})


def test_create_roles_refuses_a_role_name_with_a_newline(svc):
    role = GUIDE_ROLE.replace("name: example-role", 'name: "example-role\\n"')
    with pytest.raises(BadRequest, match=r"4: metadata.name: invalid role name 'example-role\\n'"):
        svc.call("create_roles", ADMIN, {"yaml": role})
    assert [r["metadata"]["name"] for r in svc.call("get_roles", ADMIN, {})] == ["example-role"]


def test_role_label_keys_are_names_but_values_stay_patterns():
    role = GUIDE_ROLE.replace("'*': '*'", '"env\\n": dev')
    with pytest.raises(ConfigError) as err:
        parse_roles(role, "role.yaml")
    assert (err.value.file, err.value.line, err.value.key) == (
        "role.yaml", 7, "spec.allow.db_labels")
    assert "invalid label key 'env\\n'" in err.value.message
    ok = GUIDE_ROLE.replace("'*': '*'", "teleport.dev/env: '^(dev|stage)$'")
    assert parse_roles(ok, "role.yaml")[0].allow.db_labels == {
        "teleport.dev/env": "^(dev|stage)$"}
    with pytest.raises(ConfigError, match="invalid database user 'alice\\\\n'"):
        parse_roles(GUIDE_ROLE.replace("[alice]", '["alice\\n"]'), "role.yaml")
    with pytest.raises(ValueError, match="malformed trait template"):
        parse_trait_template("{{internal.db_users}}\n")  # was read as db_users


def test_lock_targets_with_a_newline_are_refused(svc):
    for kind, target in (("bot", "example\n"), ("role", "example-role\n"), ("user", "bot-x\0")):
        with pytest.raises(BadRequest, match=f"invalid {kind} name"):
            svc.call("lock", ADMIN, {"target_kind": kind, "target": target})
    with pytest.raises(BadRequest, match="one of bot, role, user"):
        svc.call("lock", ADMIN, {"target_kind": "host", "target": "x"})
    assert svc.call("locks_ls", ADMIN, {}) == []
    assert svc.audit.query(types=[audit.LOCK_CREATE]) == []


def test_database_certificates_name_only_valid_users_and_databases(svc):
    tok = svc.call("bots_add", ADMIN, {"name": "example", "roles": ["example-role"]})["token"]
    from cryptography import x509

    from mwiproxy.identity.certs import identity_from_certificate
    pem = svc.call("join", None, {"token": tok, "public_key": _pub()})["cert"]
    bot = identity_from_certificate(x509.load_pem_x509_certificate(pem.encode()))
    req = {"public_key": _pub(), "service": "example-server", "database": "example-db",
           "username": "alice"}
    assert svc.call("issue_database_cert", bot, req)["cert"]
    for bad in ({"username": "alice\n"}, {"database": "example-db\x00"},
                {"username": "a" * 64}):
        with pytest.raises(BadRequest, match="invalid database"):
            svc.call("issue_database_cert", bot, {**req, **bad})
    denied = svc.audit.query(types=[audit.CERT_DENIED])
    assert [e.fields["db_user"] for e in denied] == ["alice\n", "alice", "a" * 64]


def test_the_proxy_refuses_a_startup_user_with_a_newline():
    class Auth:
        asked: list[DatabaseRoute] = []

        def authorize_database(self, caller, route):  # type: ignore[no-untyped-def]
            self.asked.append(route)
            return ["example-role"]

    # a certificate with no user in its route: the startup's user is what RBAC sees
    caller = Identity(user="bot-example", roles=("example-role",), bot_name="example",
                      route=DatabaseRoute("example-server", "postgres", "", ""),
                      expires=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    for user, db in (("alice\n", "example-db"), ("alice", "example-db\r"), ("a" * 64, "x")):
        with pytest.raises(Refusal, match="invalid database"):
            authorize(Auth(), caller, db_user=user, db_name=db,  # type: ignore[arg-type]
                      protocols=("postgres",), served={"example-server"})
    assert Auth.asked == []


def test_cluster_yaml_database_names_and_label_keys(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(textwrap.dedent("""\
        databases:
          - name: "example-server\\x01"
            protocol: postgres
            uri: localhost:5432
        """))
    with pytest.raises(ConfigError) as err:
        load_cluster_config(str(path))
    assert (err.value.file, err.value.line, err.value.key) == (
        str(path), 2, "databases[0].name")
    assert "invalid database service name 'example-server\\x01'" in err.value.message
    assert "control character U+0001 at position 14" in err.value.message
    path.write_text(textwrap.dedent("""\
        databases:
          - name: example-server
            protocol: postgres
            uri: localhost:5432
            static_labels: {"env\\n": dev}
        """))
    with pytest.raises(ConfigError) as err:
        load_cluster_config(str(path))
    assert (err.value.line, err.value.key) == (5, "databases[0].static_labels")
    assert "invalid label key 'env\\n'" in str(err.value)


def test_agent_heartbeats_inherit_the_checks():
    from mwiproxy.auth.agents import parse_database
    entry = {"name": "orders", "protocol": "postgres", "uri": "db:5432"}
    assert parse_database(entry).name == "orders"
    with pytest.raises(ValueError, match="name: invalid database service name 'orders\\\\n'"):
        parse_database({**entry, "name": "orders\n"})
    with pytest.raises(ValueError, match="static_labels: invalid label key"):
        parse_database({**entry, "labels": {"env\n": "prod"}})


def test_agent_join_refuses_a_hostname_or_host_with_a_newline(svc):
    token = svc.call("tokens_add", ADMIN, {"type": "db"})["token"]
    req = {"token": token, "public_key": _pub(), "hosts": ["db.internal"],
           "hostname": "db-node-1"}
    with pytest.raises(BadRequest, match="invalid agent hostname 'db-node-1\\\\n'"):
        svc.call("agent_join", None, {**req, "hostname": "db-node-1\n"})
    with pytest.raises(BadRequest, match="not a valid host name"):  # it would be a SAN
        svc.call("agent_join", None, {**req, "hosts": ["db.internal\n"]})
    assert svc.call("agent_join", None, req)["host_id"]  # the token was not burnt


def test_mwictl_tables_show_a_stored_bad_name_escaped():
    from mwiproxy.cli.common import table
    out = table(["Bot", "Roles"], [["example\n", "r"], ["ok", None]])
    assert out.splitlines()[2].split() == ["'example\\n'", "r"] and len(out.splitlines()) == 4
