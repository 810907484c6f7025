"""Who may use which database as which user: Teleport's role semantics (role v6/v7).

Decisions this module makes, where Teleport's rules leave room:

* Deny is greedy, as in Teleport: a role denies when its deny ``db_labels`` match the
  database, *or* when any deny matcher (``db_users``, ``db_names``) matches, whatever the
  labels. So ``deny: {db_users: ['*']}`` denies every user everywhere.
* ``db_name == ""`` means the protocol has no database names (Redis): the name matcher
  is skipped, in allow and deny alike, as Teleport does for such protocols. Engines for
  protocols that do have names must pass the effective name (Postgres defaults it to
  the user name), never "".
* A label key ``*`` with a value other than ``*`` is read literally, as Teleport does:
  it needs a label named ``*``, which databases do not have, so it never matches.
  ``roles.py`` refuses such selectors when a role is loaded.
* ``^…$`` label values are regexes searched as written, like Teleport's ``MatchString``,
  with RE2 (Go's syntax, linear time; roles.py compile_label_regex): ``$`` is the end of
  the text, so ``^dev$`` does not match ``"dev\\n"``. ``^a|b$`` searches as Go would (it
  matches ``a-x``): reading it as a full match instead would make a deny rule deny less
  than Teleport's. Other values are globs where ``*`` is ``.*``, matched whole.
* Rules with a ``where`` clause cannot be evaluated here: an allow rule with one grants
  nothing, a deny rule with one denies (the safe reading of both).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import re2  # type: ignore[import-untyped]

from mwiproxy.auth.roles import (
    Role,
    RoleConditions,
    Rule,
    compile_label_regex,
    is_label_regex,
    parse_trait_template,
)

__all__ = [
    "AccessDecision",
    "allowed_db_names",
    "allowed_db_users",
    "check_database_access",
    "check_rule",
    "expand_traits",
    "match_labels",
    "query_audit_policy",
    "QueryAuditPolicy",
]

WILDCARD = "*"
# Every role can see database servers and databases (Teleport adds these implicitly).
IMPLICIT_RULES = {("db_server", "read"), ("db_server", "list"), ("db", "read"), ("db", "list")}

Traits = Mapping[str, list[str]]


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    reason: str
    role: str | None = None  # the role that allowed or denied, when one did


# --------------------------------------------------------------------------- labels


def match_labels(
    selector: Mapping[str, list[str]] | Mapping[str, str] | Mapping[str, str | list[str]],
    labels: Mapping[str, str],
) -> tuple[bool, str]:
    """Does a role's label selector match a resource's labels? Returns (match, why)."""
    if not selector:
        return False, "the label selector is empty, which matches nothing"
    if _values(selector.get(WILDCARD)) == [WILDCARD]:
        return True, "'*': '*' matches every label set"
    for key in sorted(selector):
        if key not in labels:
            return False, f"label {key!r} is missing"
        patterns = _values(selector[key])
        if not any(_value_matches(p, labels[key]) for p in patterns):
            return False, f"label {key}={labels[key]!r} does not match {patterns}"
    return True, "all labels match"


def _values(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _value_matches(pattern: str, value: str) -> bool:
    if pattern == WILDCARD:
        return True
    compiled = _compile(pattern)
    # bytes, as compiled: a lone surrogate in a value must not raise mid-decision
    text = value.encode("utf-8", "surrogatepass")
    return compiled is not None and compiled.search(text) is not None


@functools.lru_cache(maxsize=1024)
def _compile(pattern: str) -> Any:
    """The RE2 program for a label pattern, compiled once per pattern."""
    if not is_label_regex(pattern):
        pattern = "(?s)^" + ".*".join(re2.escape(p) for p in pattern.split(WILDCARD)) + r"\z"
    try:
        return compile_label_regex(pattern)
    except ValueError:
        return None  # roles are checked on load; a bad stored one just never matches


# --------------------------------------------------------------------------- traits


def expand_traits(values: Iterable[str], traits: Traits | None) -> list[str]:
    """Replace ``{{internal.x}}`` / ``{{external.x}}`` by the values of trait ``x``.

    A missing trait expands to nothing; so does a malformed template (roles are
    validated on load, and a broken entry must never widen access). Order is kept,
    duplicates dropped.
    """
    result: list[str] = []
    for value in values:
        try:
            trait = parse_trait_template(value)
        except ValueError:
            continue
        expanded = [value] if trait is None else (traits or {}).get(trait, [])
        result.extend(v for v in expanded if v not in result)
    return result


def _matches(values: Iterable[str], wanted: str, traits: Traits | None) -> bool:
    expanded = expand_traits(values, traits)
    return WILDCARD in expanded or wanted in expanded


# --------------------------------------------------------------------------- databases


def check_database_access(
    roles: Iterable[Role],
    *,
    db_labels: Mapping[str, str],
    db_name: str,
    db_user: str,
    traits: Traits | None = None,
    db_service: str = "",
) -> AccessDecision:
    """Deny rules first, then one role must allow labels, user and name together.

    ``db_service`` (the database's name in cluster.yaml) only makes reasons clearer.
    """
    roles = list(roles)
    where = f' on database "{db_service}"' if db_service else ""
    if not db_user:
        return AccessDecision(False, f"no db_user given{where}")
    denial = _find_denial(roles, db_labels, db_name, db_user, traits, where)
    if denial is not None:
        return denial
    for role in roles:
        if _allows(role.allow, db_labels, db_name, db_user, traits):
            shown = f' with db_name "{db_name}"' if db_name else ""
            reason = f'role "{role.name}" allows db_user "{db_user}"{shown}{where}'
            return AccessDecision(True, reason, role.name)
    return AccessDecision(False, _refusal(roles, db_labels, db_name, db_user, traits, where))


def _find_denial(
    roles: list[Role],
    db_labels: Mapping[str, str],
    db_name: str,
    db_user: str,
    traits: Traits | None,
    where: str,
) -> AccessDecision | None:
    for role in roles:
        deny = role.deny
        labels_match, _ = match_labels(deny.db_labels, db_labels)
        if labels_match:
            why = f'role "{role.name}" denies access to databases with labels {dict(db_labels)}'
            return AccessDecision(False, why + where, role.name)
        if _matches(deny.db_users, db_user, traits):
            return AccessDecision(
                False, f'role "{role.name}" denies db_user "{db_user}"{where}', role.name
            )
        if db_name and _matches(deny.db_names, db_name, traits):
            return AccessDecision(
                False, f'role "{role.name}" denies db_name "{db_name}"{where}', role.name
            )
    return None


def _allows(
    allow: RoleConditions,
    db_labels: Mapping[str, str],
    db_name: str,
    db_user: str,
    traits: Traits | None,
) -> bool:
    return (
        match_labels(allow.db_labels, db_labels)[0]
        and _matches(allow.db_users, db_user, traits)
        and (not db_name or _matches(allow.db_names, db_name, traits))
    )


def _refusal(
    roles: list[Role],
    db_labels: Mapping[str, str],
    db_name: str,
    db_user: str,
    traits: Traits | None,
    where: str,
) -> str:
    """Say which matcher stopped access, so the operator knows which line to change."""
    if not roles:
        return f"no roles{where}: the identity has no roles"
    labelled = [r for r in roles if match_labels(r.allow.db_labels, db_labels)[0]]
    if not labelled:
        return f"no role allows access to database labels {dict(db_labels)}{where}"
    with_user = [r for r in labelled if _matches(r.allow.db_users, db_user, traits)]
    if not with_user:
        return f'no role allows db_user "{db_user}"{where}'
    return f'no role allows db_name "{db_name}" for db_user "{db_user}"{where}'


def allowed_db_users(
    roles: Iterable[Role], db_labels: Mapping[str, str], traits: Traits | None = None
) -> list[str]:
    """The users a holder of ``roles`` may name on this database (``*``: any user)."""
    return _allowed(roles, db_labels, traits, "db_users")


def allowed_db_names(
    roles: Iterable[Role], db_labels: Mapping[str, str], traits: Traits | None = None
) -> list[str]:
    """The database names a holder of ``roles`` may open here (``*``: any name)."""
    return _allowed(roles, db_labels, traits, "db_names")


def _allowed(
    roles: Iterable[Role], db_labels: Mapping[str, str], traits: Traits | None, attr: str
) -> list[str]:
    roles = list(roles)
    denied: set[str] = set()
    for role in roles:
        if match_labels(role.deny.db_labels, db_labels)[0]:
            return []
        denied.update(expand_traits(getattr(role.deny, attr), traits))
    if WILDCARD in denied:
        return []
    allowed: list[str] = []
    for role in roles:
        if match_labels(role.allow.db_labels, db_labels)[0]:
            allowed.extend(expand_traits(getattr(role.allow, attr), traits))
    return sorted({value for value in allowed if value not in denied})


# --------------------------------------------------------------------------- rules


def check_rule(roles: Iterable[Role], resource: str, verb: str) -> bool:
    """May these roles apply ``verb`` to ``resource`` (e.g. ``list`` on ``db``)?"""
    roles = list(roles)
    for role in roles:
        if any(_rule_covers(rule, resource, verb) for rule in role.deny.rules):
            return False
    for role in roles:
        for rule in role.allow.rules:
            if not rule.where and _rule_covers(rule, resource, verb):
                return True
    return bool(roles) and (resource, verb) in IMPLICIT_RULES


def _rule_covers(rule: Rule, resource: str, verb: str) -> bool:
    return (WILDCARD in rule.resources or resource in rule.resources) and (
        WILDCARD in rule.verbs or verb in rule.verbs
    )


# --------------------------------------------------------------------------- query audit

QueryAuditParameters = Literal["omit", "hash", "plain"]
_PARAMETERS_BY_STRICTNESS: tuple[QueryAuditParameters, ...] = ("omit", "hash", "plain")
DEFAULT_QUERY_AUDIT_PARAMETERS: QueryAuditParameters = "hash"


@dataclass(frozen=True)
class QueryAuditPolicy:
    """What query audit records for one session: whether it runs, and how bind
    parameters are written (`omit`: not at all, `hash`: sqlredact.param_digest,
    `plain`: as sent)."""

    enabled: bool = True
    parameters: QueryAuditParameters = DEFAULT_QUERY_AUDIT_PARAMETERS


def query_audit_policy(roles: Iterable[Role]) -> QueryAuditPolicy:
    """The policy of a session from the roles that grant it, the safe way round: audit
    stays on unless every role turns it off (`query_audit: false`), and parameters are
    written the most restrictive way any role asks (omit < hash < plain; a role that
    says nothing asks for hash). No role at all: the defaults."""
    roles = list(roles)
    enabled = not roles or any(r.options.query_audit is not False for r in roles)
    asked = [r.options.query_audit_parameters or DEFAULT_QUERY_AUDIT_PARAMETERS for r in roles]
    parameters = min(asked, key=_PARAMETERS_BY_STRICTNESS.index,
                     default=DEFAULT_QUERY_AUDIT_PARAMETERS)
    return QueryAuditPolicy(enabled=enabled, parameters=parameters)
