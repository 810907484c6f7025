from __future__ import annotations

import pytest

from mwiproxy.auth.rbac import (
    AccessDecision,
    QueryAuditPolicy,
    allowed_db_names,
    allowed_db_users,
    check_database_access,
    check_rule,
    expand_traits,
    match_labels,
    query_audit_policy,
)
from mwiproxy.auth.roles import Role, RoleConditions, RoleOptions, Rule, parse_roles
from mwiproxy.config.loader import ConfigError
from tests._testbase.fixtures import GUIDE_ROLE

LABELS = {"env": "prod", "region": "eu-west-1", "team": "db"}

MATCH = [
    # (selector, labels, expected)
    ({}, LABELS, False),
    ({}, {}, False),
    ({"*": "*"}, LABELS, True),
    ({"*": "*"}, {}, True),
    ({"*": ["*"]}, {}, True),
    ({"*": "prod"}, LABELS, False),
    ({"env": "prod"}, LABELS, True),
    ({"env": "dev"}, LABELS, False),
    ({"env": "*"}, LABELS, True),
    ({"env": ["dev", "prod"]}, LABELS, True),
    ({"env": ["dev", "staging"]}, LABELS, False),
    ({"region": "eu-*"}, LABELS, True),
    ({"region": "*-1"}, LABELS, True),
    ({"region": "eu"}, LABELS, False),
    ({"region": "eu-*-2"}, LABELS, False),
    ({"region": "eu.west.1"}, LABELS, False),
    ({"region": "^eu-.*$"}, LABELS, True),
    ({"region": "^us-.*$"}, LABELS, False),
    ({"region": "^eu$"}, LABELS, False),
    ({"region": "eu-.*"}, LABELS, False),
    ({"region": "^[$"}, LABELS, False),
    ({"missing": "*"}, LABELS, False),
    ({"env": "prod", "team": "db"}, LABELS, True),
    ({"env": "prod", "team": "web"}, LABELS, False),
    ({"env": "prod", "missing": "x"}, LABELS, False),
    # identifiers match whole: Python's `$` would also match before a final newline
    ({"env": "^prod$"}, {"env": "prod\n"}, False),
    ({"env": "prod"}, {"env": "prod\n"}, False),
    ({"env": "pro*"}, {"env": "prod\nx"}, True),
]


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    MATCH,
    ids=[f"{s}-{'match' if e else 'no'}" for s, _, e in MATCH],
)
def test_match_labels(
    selector: dict[str, str | list[str]], labels: dict[str, str], expected: bool
) -> None:
    matched, reason = match_labels(selector, labels)
    assert matched is expected
    assert reason


def test_match_labels_reasons() -> None:
    assert "empty" in match_labels({}, LABELS)[1]
    assert "'missing' is missing" in match_labels({"missing": "x"}, LABELS)[1]
    assert "does not match" in match_labels({"env": "dev"}, LABELS)[1]


TRAITS = {"db_users": ["alice", "bob"], "db_names": ["app"], "email": ["a@x"]}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["root"], ["root"]),
        (["{{internal.db_users}}"], ["alice", "bob"]),
        (["{{internal.db_names}}", "other"], ["app", "other"]),
        (["{{external.email}}"], ["a@x"]),
        (["{{external.missing}}"], []),
        (["alice", "{{internal.db_users}}"], ["alice", "bob"]),
        (["{{broken"], []),
        (["*"], ["*"]),
    ],
    ids=["literal", "db_users", "db_names", "external", "missing", "dedupe", "broken", "wild"],
)
def test_expand_traits(values: list[str], expected: list[str]) -> None:
    assert expand_traits(values, TRAITS) == expected


def role(name: str = "r", **conds: RoleConditions) -> Role:
    return Role(name=name, **conds)  # type: ignore[arg-type]


def allow(**kw: object) -> RoleConditions:
    return RoleConditions(**kw)  # type: ignore[arg-type]


ALL = {"*": "*"}
PROD = {"env": "prod"}
GUIDE = parse_roles(GUIDE_ROLE, "role.yaml")

ACCESS = [
    # id, roles, db_name, db_user, allowed, reason fragment
    ("guide-alice", GUIDE, "example-db", "alice", True, 'role "example-role" allows'),
    ("guide-bob", GUIDE, "example-db", "bob", False, 'no role allows db_user "bob"'),
    ("guide-other-db", GUIDE, "other", "alice", False, 'no role allows db_name "other"'),
    ("no-roles", [], "x", "alice", False, "no roles"),
    (
        "empty-selector",
        [role(allow=allow(db_users=["*"], db_names=["*"]))],
        "x",
        "a",
        False,
        "labels",
    ),
    (
        "label-mismatch",
        [role(allow=allow(db_labels={"env": "dev"}, db_users=["*"], db_names=["*"]))],
        "x",
        "a",
        False,
        "no role allows access to database labels",
    ),
    (
        "wild-user-name",
        [role(allow=allow(db_labels=ALL, db_users=["*"], db_names=["*"]))],
        "x",
        "a",
        True,
        "allows",
    ),
    (
        "missing-users",
        [role(allow=allow(db_labels=ALL, db_names=["*"]))],
        "x",
        "a",
        False,
        "db_user",
    ),
    (
        "missing-names",
        [role(allow=allow(db_labels=ALL, db_users=["*"]))],
        "x",
        "a",
        False,
        "db_name",
    ),
    (
        "all-in-one-role-needed",
        [
            role("u", allow=allow(db_labels=ALL, db_users=["a"], db_names=["y"])),
            role("n", allow=allow(db_labels=ALL, db_users=["b"], db_names=["x"])),
        ],
        "x",
        "a",
        False,
        'no role allows db_name "x"',
    ),
    (
        "second-role-allows",
        [
            role("u", allow=allow(db_labels={"env": "dev"}, db_users=["a"], db_names=["x"])),
            role("p", allow=allow(db_labels=PROD, db_users=["a"], db_names=["x"])),
        ],
        "x",
        "a",
        True,
        'role "p" allows',
    ),
    (
        "no-db-name-protocol",
        [role(allow=allow(db_labels=ALL, db_users=["a"]))],
        "",
        "a",
        True,
        "allows",
    ),
    ("empty-user", [role(allow=allow(db_labels=ALL, db_users=["*"]))], "", "", False, "no db_user"),
    (
        "deny-label",
        [
            role("ok", allow=allow(db_labels=ALL, db_users=["*"], db_names=["*"])),
            role("block", deny=allow(db_labels=PROD)),
        ],
        "x",
        "a",
        False,
        'role "block" denies access to databases with labels',
    ),
    (
        "deny-label-other-env",
        [
            role("ok", allow=allow(db_labels=ALL, db_users=["*"], db_names=["*"])),
            role("block", deny=allow(db_labels={"env": "dev"})),
        ],
        "x",
        "a",
        True,
        "allows",
    ),
    (
        "deny-user",
        [
            role(
                "dev",
                allow=allow(db_labels=ALL, db_users=["*"], db_names=["*"]),
                deny=allow(db_users=["root"]),
            )
        ],
        "x",
        "root",
        False,
        'role "dev" denies db_user "root"',
    ),
    (
        "deny-user-other-user",
        [
            role(
                "dev",
                allow=allow(db_labels=ALL, db_users=["*"], db_names=["*"]),
                deny=allow(db_users=["root"]),
            )
        ],
        "x",
        "alice",
        True,
        "allows",
    ),
    (
        "deny-user-wildcard",
        [
            role("ok", allow=allow(db_labels=ALL, db_users=["*"], db_names=["*"])),
            role("nobody", deny=allow(db_users=["*"])),
        ],
        "x",
        "alice",
        False,
        'role "nobody" denies db_user "alice"',
    ),
    (
        "deny-name",
        [
            role(
                "dev",
                allow=allow(db_labels=ALL, db_users=["*"], db_names=["*"]),
                deny=allow(db_names=["postgres"]),
            )
        ],
        "postgres",
        "a",
        False,
        'denies db_name "postgres"',
    ),
    (
        "deny-name-wildcard-no-name-protocol",
        [role("dev", allow=allow(db_labels=ALL, db_users=["*"]), deny=allow(db_names=["*"]))],
        "",
        "a",
        True,
        "allows",
    ),
    (
        "deny-wins-over-allow-in-other-role",
        [
            role("allow-root", allow=allow(db_labels=ALL, db_users=["root"], db_names=["*"])),
            role("no-root", deny=allow(db_users=["root"])),
        ],
        "x",
        "root",
        False,
        'role "no-root" denies',
    ),
    (
        "trait-user",
        [role(allow=allow(db_labels=ALL, db_users=["{{internal.db_users}}"], db_names=["*"]))],
        "x",
        "bob",
        True,
        "allows",
    ),
    (
        "trait-user-not-in-traits",
        [role(allow=allow(db_labels=ALL, db_users=["{{internal.db_users}}"], db_names=["*"]))],
        "x",
        "carol",
        False,
        'db_user "carol"',
    ),
    (
        "trait-name",
        [role(allow=allow(db_labels=ALL, db_users=["*"], db_names=["{{internal.db_names}}"]))],
        "app",
        "a",
        True,
        "allows",
    ),
    (
        "trait-deny-external",
        [
            role(
                allow=allow(db_labels=ALL, db_users=["*"], db_names=["*"]),
                deny=allow(db_users=["{{external.email}}"]),
            )
        ],
        "x",
        "a@x",
        False,
        "denies",
    ),
]


@pytest.mark.parametrize(
    ("roles", "db_name", "db_user", "allowed", "fragment"),
    [a[1:] for a in ACCESS],
    ids=[a[0] for a in ACCESS],
)
def test_check_database_access(
    roles: list[Role], db_name: str, db_user: str, allowed: bool, fragment: str
) -> None:
    decision = check_database_access(
        roles, db_labels=LABELS, db_name=db_name, db_user=db_user, traits=TRAITS
    )
    assert decision.allowed is allowed, decision.reason
    assert fragment in decision.reason


@pytest.mark.parametrize("labels", [{}, {"env": "prod"}, {"anything": "x"}])
def test_guide_role_any_labels(labels: dict[str, str]) -> None:
    ok = check_database_access(GUIDE, db_labels=labels, db_name="example-db", db_user="alice")
    assert ok == AccessDecision(
        True, 'role "example-role" allows db_user "alice" with db_name "example-db"', "example-role"
    )
    refused = check_database_access(
        GUIDE, db_labels=labels, db_name="example-db", db_user="bob", db_service="example-server"
    )
    assert refused == AccessDecision(
        False, 'no role allows db_user "bob" on database "example-server"'
    )


def test_traits_default_to_none() -> None:
    roles = [role(allow=allow(db_labels=ALL, db_users=["{{internal.db_users}}"], db_names=["*"]))]
    assert not check_database_access(roles, db_labels={}, db_name="x", db_user="bob").allowed


RULES = [
    # id, roles, resource, verb, expected
    ("implicit-db-read", [role()], "db", "read", True),
    ("implicit-db-list", [role()], "db", "list", True),
    ("implicit-db-server-list", [role()], "db_server", "list", True),
    ("implicit-not-write", [role()], "db", "create", False),
    ("implicit-not-other", [role()], "role", "read", False),
    ("no-roles", [], "db", "read", False),
    (
        "allow-rule",
        [role(allow=allow(rules=[Rule(["role"], ["read", "list"])]))],
        "role",
        "list",
        True,
    ),
    (
        "allow-rule-other-verb",
        [role(allow=allow(rules=[Rule(["role"], ["read"])]))],
        "role",
        "delete",
        False,
    ),
    ("allow-wildcards", [role(allow=allow(rules=[Rule(["*"], ["*"])]))], "token", "create", True),
    (
        "allow-where-not-granted",
        [role(allow=allow(rules=[Rule(["role"], ["read"], "x")]))],
        "role",
        "read",
        False,
    ),
    (
        "deny-beats-allow",
        [
            role(allow=allow(rules=[Rule(["*"], ["*"])])),
            role(deny=allow(rules=[Rule(["role"], ["*"])])),
        ],
        "role",
        "read",
        False,
    ),
    (
        "deny-beats-implicit",
        [role(deny=allow(rules=[Rule(["db"], ["list"])]))],
        "db",
        "list",
        False,
    ),
    ("deny-other-verb", [role(deny=allow(rules=[Rule(["db"], ["list"])]))], "db", "read", True),
    (
        "deny-where-applies",
        [role(deny=allow(rules=[Rule(["db"], ["read"], "x")]))],
        "db",
        "read",
        False,
    ),
]


@pytest.mark.parametrize(
    ("roles", "resource", "verb", "expected"), [r[1:] for r in RULES], ids=[r[0] for r in RULES]
)
def test_check_rule(roles: list[Role], resource: str, verb: str, expected: bool) -> None:
    assert check_rule(roles, resource, verb) is expected


def test_allowed_users_and_names() -> None:
    roles = [
        role("a", allow=allow(db_labels=ALL, db_users=["alice", "root"], db_names=["app"])),
        role("b", allow=allow(db_labels={"env": "dev"}, db_users=["dev"], db_names=["devdb"])),
        role(
            "c",
            allow=allow(db_labels=PROD, db_users=["{{internal.db_users}}"]),
            deny=allow(db_users=["root"]),
        ),
    ]
    assert allowed_db_users(roles, LABELS, TRAITS) == ["alice", "bob"]
    assert allowed_db_names(roles, LABELS, TRAITS) == ["app"]
    blocked = [*roles, role("x", deny=allow(db_labels=PROD))]
    assert allowed_db_users(blocked, LABELS, TRAITS) == []
    nobody = [*roles, role("x", deny=allow(db_users=["*"]))]
    assert allowed_db_users(nobody, LABELS, TRAITS) == []


# ---- RE2: linear-time label matching ---------------------------------------------------

REDOS_VALUE = "a" * 30 + "!"


def test_a_backtracking_bomb_pattern_matches_in_linear_time() -> None:
    # backtracking `re` tries 2**30 ways to split the a's before giving up; RE2 does not
    assert match_labels({"team": "^(a+)+$"}, {"team": REDOS_VALUE})[0] is False
    assert match_labels({"team": "^(a+)+$"}, {"team": "a" * 100_000})[0] is True
    assert match_labels({"team": "^(a|aa)+$"}, {"team": "a" * 5000 + "!"})[0] is False


def test_a_redos_role_decides_access_over_many_databases() -> None:
    (bomb,) = parse_roles(
        "kind: role\nversion: v7\nmetadata: {name: bomb}\nspec:\n  allow:\n"
        "    db_labels: {team: '^(a+)+$'}\n    db_users: [alice]\n    db_names: ['*']\n"
        "  deny:\n    db_labels: {team: '^(a|a)*b$'}\n", "bomb.yaml")
    for i in range(200):
        decision = check_database_access([bomb], db_labels={"team": REDOS_VALUE + str(i)},
                                         db_name="app", db_user="alice")
        assert not decision.allowed
    assert check_database_access([bomb], db_labels={"team": "aaa"}, db_name="app",
                                 db_user="alice").allowed


@pytest.mark.parametrize(("pattern", "why"), [
    (r"^(a)\1$", "invalid escape sequence"),
    ("^(?=a).*$", "invalid perl operator"),
    ("^(?<!a)b$", "invalid perl operator"),
    ("^a{1001}$", "invalid repetition size"),
], ids=["backreference", "lookahead", "lookbehind", "repeat-too-large"])
def test_patterns_re2_refuses_are_refused_when_the_role_is_created(pattern: str,
                                                                   why: str) -> None:
    text = ("kind: role\nversion: v7\nmetadata:\n  name: fancy\nspec:\n  allow:\n"
            f"    db_labels:\n      team: '{pattern}'\n")
    with pytest.raises(ConfigError) as e:
        parse_roles(text, "fancy.yaml")
    message = str(e.value)
    assert message.startswith("fancy.yaml:8: spec.allow.db_labels.team: invalid regular ")
    assert why in message and "RE2 syntax" in message
    assert message.endswith('(role "fancy")')


def test_go_semantics_are_kept_with_re2() -> None:
    # `$` is the end of the text, as in Go: no match before a final newline
    assert match_labels({"env": "^prod$"}, {"env": "prod\n"})[0] is False
    assert match_labels({"env": "^prod$"}, {"env": "prod"})[0] is True
    # searched as written, like Teleport: `^a|b$` is "starts with a or ends with b", so a
    # deny rule written that way denies as much here as it does in Teleport
    assert match_labels({"env": "^prod|test$"}, {"env": "prod-eu"})[0] is True
    # globs: `*` spans anything, the rest is literal and matched whole
    assert match_labels({"env": "p.o*"}, {"env": "prod"})[0] is False
    assert match_labels({"env": "p.o*"}, {"env": "p.od"})[0] is True
    assert match_labels({"env": "é*"}, {"env": "été"})[0] is True


def test_a_label_value_with_a_lone_surrogate_is_judged_not_raised() -> None:
    # JSON heartbeats can carry one; matching must neither raise nor skip a deny rule
    assert match_labels({"env": "*"}, {"env": "\ud800"})[0] is True
    assert match_labels({"env": "^x.*$"}, {"env": "x\ud800"})[0] is True  # RE2: any byte
    deny_all = role("d", allow=allow(db_labels=ALL, db_users=["*"]),
                    deny=allow(db_labels={"env": "*"}))
    assert not check_database_access([deny_all], db_labels={"env": "\ud800"}, db_name="a",
                                     db_user="u").allowed


def _audit_role(name: str, enabled: bool | None, parameters: str | None) -> Role:
    options = RoleOptions(query_audit=enabled, query_audit_parameters=parameters)  # type: ignore[arg-type]
    return Role(name=name, options=options)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ([], QueryAuditPolicy(True, "hash")),
        ([(None, None)], QueryAuditPolicy(True, "hash")),
        ([(False, None)], QueryAuditPolicy(False, "hash")),
        ([(False, None), (False, "plain")], QueryAuditPolicy(False, "hash")),
        # one role leaving it on keeps it on, whatever the others say
        ([(False, None), (None, None)], QueryAuditPolicy(True, "hash")),
        ([(False, "plain"), (True, "plain")], QueryAuditPolicy(True, "plain")),
        # parameters: the most restrictive wins, a silent role asks for hash
        ([(None, "plain"), (None, None)], QueryAuditPolicy(True, "hash")),
        ([(None, "plain"), (None, "omit"), (None, "hash")], QueryAuditPolicy(True, "omit")),
        ([(True, "plain")], QueryAuditPolicy(True, "plain")),
    ],
)
def test_query_audit_policy(settings: list[tuple[bool | None, str | None]],
                            expected: QueryAuditPolicy) -> None:
    roles = [_audit_role(f"r{i}", e, p) for i, (e, p) in enumerate(settings)]
    assert query_audit_policy(roles) == expected


def test_query_audit_policy_from_role_files() -> None:
    text = (GUIDE_ROLE + "  options:\n    query_audit: false\n"
            "---\n" + GUIDE_ROLE.replace("example-role", "other")
            + "  options:\n    query_audit_parameters: plain\n")
    roles = parse_roles(text, "role.yaml")
    assert query_audit_policy(roles) == QueryAuditPolicy(enabled=True, parameters="hash")
    assert query_audit_policy(roles[:1]) == QueryAuditPolicy(enabled=False, parameters="hash")
    assert query_audit_policy(roles[1:]) == QueryAuditPolicy(enabled=True, parameters="plain")
