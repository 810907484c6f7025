from __future__ import annotations

from datetime import timedelta

import pytest

from mwiproxy.auth.roles import (
    DEFAULT_MAX_SESSION_TTL,
    Role,
    RoleConditions,
    RoleOptions,
    Rule,
    parse_roles,
    parse_trait_template,
)
from mwiproxy.config.loader import ConfigError
from tests._testbase.fixtures import GUIDE_ROLE

FULL_ROLE = """\
kind: role
version: v7
metadata:
  name: dev@team
  description: developers
  labels: {team: dev}
spec:
  allow:
    db_labels:
      env: [dev, staging]
      region: '^eu-.*$'
    db_names: ['{{internal.db_names}}', app]
    db_users: ['{{external.username}}', '{{external["x:y"]}}']
    db_roles: [reader]
    rules:
      - resources: [role]
        verbs: [read]
        where: contains(user.spec.traits["groups"], "admins")
    logins: [ubuntu]
    node_labels: {'*': '*'}
    app_labels: {app: web}
  deny:
    db_users: [root]
  options:
    max_session_ttl: 8h
    forward_agent: false
    client_idle_timeout: 30m
    disconnect_expired_cert: true
    query_audit: true
    query_audit_parameters: omit
"""


def test_guide_role() -> None:
    (role,) = parse_roles(GUIDE_ROLE, "role.yaml")
    assert role.name == "example-role" and role.version == "v6"
    assert role.allow.db_labels == {"*": "*"}
    assert role.allow.db_names == ["example-db"]
    assert role.allow.db_users == ["alice"]
    assert role.allow.rules == [Rule(resources=["db_server", "db"], verbs=["read", "list"])]
    assert role.deny == RoleConditions()
    assert role.max_session_ttl == DEFAULT_MAX_SESSION_TTL


def test_full_role() -> None:
    (role,) = parse_roles(FULL_ROLE, "role.yaml")
    assert (role.description, role.labels) == ("developers", {"team": "dev"})
    assert role.allow.db_labels == {"env": ["dev", "staging"], "region": "^eu-.*$"}
    assert role.allow.db_roles == ["reader"]
    assert role.allow.rules[0].where.startswith("contains(")
    assert role.deny.db_users == ["root"]
    assert role.options == RoleOptions(
        max_session_ttl=timedelta(hours=8),
        forward_agent=False,
        client_idle_timeout=timedelta(minutes=30),
        disconnect_expired_cert=True,
        query_audit=True,
        query_audit_parameters="omit",
    )
    assert role.max_session_ttl == timedelta(hours=8)


@pytest.mark.parametrize("text", [GUIDE_ROLE, FULL_ROLE], ids=["guide", "full"])
def test_round_trip(text: str) -> None:
    (role,) = parse_roles(text, "role.yaml")
    assert parse_roles(role.to_yaml(), "again.yaml") == [role]
    assert Role.from_dict(role.to_dict()) == role


def test_built_role_round_trips() -> None:
    role = Role(name="r", allow=RoleConditions(db_users=["*"], db_labels={"*": "*"}))
    assert Role.from_dict(role.to_dict()) == role


def test_multi_document() -> None:
    text = GUIDE_ROLE + "---\n" + GUIDE_ROLE.replace("example-role", "second")
    assert [r.name for r in parse_roles(text, "roles.yaml")] == ["example-role", "second"]


def role_with(allow: str) -> str:
    """A role whose spec.allow body is ``allow`` (indented by 4 spaces); starts at line 7."""
    return "kind: role\nversion: v6\nmetadata:\n  name: r\nspec:\n  allow:\n" + allow


BAD = [
    # (yaml, line, key, fragment)
    (GUIDE_ROLE.replace("kind: role", "kind: user"), 1, "kind", 'expected "role"'),
    (GUIDE_ROLE.replace("kind: role\n", ""), 1, "kind", "is required"),
    (GUIDE_ROLE.replace("v6", "v5"), 2, "version", "'v6', 'v7'"),
    (GUIDE_ROLE.replace("  name: example-role\n", "  nmae: x\n"), 4, "metadata.nmae", '"name"'),
    (GUIDE_ROLE.replace("example-role", "bad name"), 4, "metadata.name", "invalid role name"),
    (GUIDE_ROLE.replace("example-role", "'é'"), 4, "metadata.name", "invalid role name"),
    (GUIDE_ROLE.replace("metadata:\n  name: example-role\n", ""), 1, "metadata", "is required"),
    (GUIDE_ROLE.replace("spec:", "sepc:"), 5, "sepc", 'did you mean "spec"'),
    (GUIDE_ROLE.replace("allow:", "alow:"), 6, "spec.alow", 'did you mean "allow"'),
    (
        GUIDE_ROLE.replace("db_labels:", "db_lables:"),
        7,
        "spec.allow.db_lables",
        'did you mean "db_labels"',
    ),
    (role_with("    db_labels: {env: '^(dev$'}\n"), 7, "spec.allow.db_labels.env", "regular exp"),
    (
        role_with("    db_labels:\n      a: x\n      b: ['^[$']\n"),
        9,
        "spec.allow.db_labels.b",
        "regular",
    ),
    (role_with("    db_labels: {'*': dev}\n"), 7, "spec.allow.db_labels.*", "wildcard label key"),
    (
        role_with("    db_labels: {env: '{{external.env}}'}\n"),
        7,
        "spec.allow.db_labels.env",
        "templ",
    ),
    (role_with("    db_labels: {env: 1}\n"), 7, "spec.allow.db_labels.env", "a string"),
    (role_with("    db_labels: [env]\n"), 7, "spec.allow.db_labels", "expected a mapping"),
    (role_with("    db_users: alice\n"), 7, "spec.allow.db_users", "expected a list"),
    (role_with("    db_users: [1]\n"), 7, "spec.allow.db_users[0]", "a string"),
    (
        role_with("    db_users: ['{{internal.db_users']\n"),
        7,
        "spec.allow.db_users[0]",
        "malformed",
    ),
    (role_with("    db_names: ['{{nope.x}}']\n"), 7, "spec.allow.db_names[0]", "malformed"),
    (role_with("    db_names: ['x-{{external.a}}']\n"), 7, "spec.allow.db_names[0]", "malformed"),
    (
        role_with("    rules:\n      - resources: [db]\n"),
        8,
        "spec.allow.rules[0].verbs",
        "required",
    ),
    (
        role_with("    rules:\n      - {resources: [1], verbs: [x]}\n"),
        8,
        "spec.allow.rules[0].resources[0]",
        "a string",
    ),
    (
        role_with("    rules:\n      - {resources: [db], verbs: [x], actions: []}\n"),
        8,
        "spec.allow.rules[0].actions",
        "unknown field",
    ),
    (role_with("    kubernetes_groups: [x]\n"), 7, "spec.allow.kubernetes_groups", "unknown field"),
    (
        GUIDE_ROLE + "  options:\n    max_session_ttl: forever\n",
        15,
        "spec.options.max_session_ttl",
        "invalid duration",
    ),
    (
        GUIDE_ROLE + "  options:\n    port_forwarding: true\n",
        15,
        "spec.options.port_forwarding",
        "unknown field",
    ),
    (
        GUIDE_ROLE + "  options:\n    forward_agent: 'yes'\n",
        15,
        "spec.options.forward_agent",
        "a boolean",
    ),
    (
        GUIDE_ROLE + "  options:\n    query_audit: 'off'\n",
        15,
        "spec.options.query_audit",
        "a boolean",
    ),
    (
        GUIDE_ROLE + "  options:\n    query_audit: true\n    query_audit_parameters: md5\n",
        16,
        "spec.options.query_audit_parameters",
        "must be one of 'hash', 'omit', 'plain'",
    ),
    (
        GUIDE_ROLE + "  options:\n    query_audit_params: omit\n",
        15,
        "spec.options.query_audit_params",
        "unknown field",
    ),
    (GUIDE_ROLE + "---\n" + GUIDE_ROLE, 18, "metadata.name", "duplicate role"),
    ("kind: role\nversion: v6\nmetadata: {name: [x]}\n", 3, "metadata.name", "a string"),
    ("kind: role\nkind: role\n", 2, "kind", "duplicate key"),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"), BAD, ids=[f"{b[2]}:{b[3]}" for b in BAD]
)
def test_bad_roles(text: str, line: int, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_roles(text, "role.yaml")
    err = info.value
    assert (err.file, err.line, err.key) == ("role.yaml", line, key)
    assert fragment in err.message
    assert str(err).startswith(f"role.yaml:{line}: {key}: ")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "no role found"), ("kind: [role\n", "invalid YAML")],
    ids=["empty", "garbage"],
)
def test_bad_files(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_roles(text, "role.yaml")


def test_from_dict_names_the_source() -> None:
    with pytest.raises(ConfigError) as info:
        Role.from_dict({"kind": "role", "version": "v6", "metadata": {"name": "x"}, "spec": 1})
    assert info.value.file == "<stored>" and info.value.key == "spec"


@pytest.mark.parametrize(
    ("value", "trait"),
    [
        ("alice", None),
        ("*", None),
        ("{{internal.db_users}}", "db_users"),
        ("{{ internal.db_names }}", "db_names"),
        ("{{external.foo}}", "foo"),
        ('{{external["http://x/claims"]}}', "http://x/claims"),
    ],
)
def test_parse_trait_template(value: str, trait: str | None) -> None:
    assert parse_trait_template(value) == trait


@pytest.mark.parametrize(
    "value", ["{{internal.db_users", "internal.x}}", "{{foo}}", "{{external.}}", "a{{external.b}}"]
)
def test_parse_trait_template_malformed(value: str) -> None:
    with pytest.raises(ValueError, match="malformed"):
        parse_trait_template(value)
