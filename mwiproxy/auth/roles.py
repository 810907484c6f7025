"""Teleport-compatible role files (``kind: role``, ``version: v6|v7``).

Only the database-relevant part of Teleport's role is interpreted; a few other common
condition fields (``logins``, ``node_labels``, ``app_labels``) and options are accepted
and kept so that roles written for Teleport load unchanged. Anything else is a strict
error, because a silently ignored ``deny`` field would grant more than the author meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import re2  # type: ignore[import-untyped]
import yaml

from mwiproxy.config.durations import format_duration
from mwiproxy.config.loader import (
    MAX_YAML_BYTES,
    ConfigError,
    Node,
    decode,
    load_yaml_documents,
    locate_line,
)
from mwiproxy.identity import names

__all__ = [
    "DEFAULT_MAX_SESSION_TTL",
    "LabelSelector",
    "Role",
    "RoleConditions",
    "RoleOptions",
    "Rule",
    "compile_label_regex",
    "is_label_regex",
    "parse_roles",
    "parse_trait_template",
]

# Teleport's default for a role without max_session_ttl.
DEFAULT_MAX_SESSION_TTL = timedelta(hours=30)

LabelSelector = dict[str, str | list[str]]

_TEMPLATE = re.compile(
    r"""^\{\{\s*(?P<ns>internal|external)
        (?:\.(?P<dotted>[A-Za-z0-9_-]+)|\["(?P<quoted>[^"]+)"\])
        \s*\}\}$""",
    re.VERBOSE,
)


def is_label_regex(pattern: str) -> bool:
    """Teleport reads a label value written ``^…$`` as a regex, anything else as a glob."""
    return pattern.startswith("^") and pattern.endswith("$")


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is reported to its author, not on stderr
_RE2_OPTIONS.never_capture = True  # only "does it match" is ever asked


def compile_label_regex(pattern: str) -> Any:
    """``pattern`` compiled by RE2, the syntax of Go's regexp that Teleport's roles use.

    RE2 matches in time linear in the text, so neither a role author nor a label value
    (agents send theirs) can make matching explode the way backtracking ``re`` does with
    ``^(a+)+$``. Patterns are compiled as UTF-8 bytes and matched against bytes, so a
    value holding a lone surrogate (JSON allows one) cannot raise. Raises ValueError
    saying why RE2 refuses a pattern (backreferences, lookaround, ...).
    """
    try:
        return re2.compile(pattern.encode("utf-8", "surrogatepass"), _RE2_OPTIONS)
    except re2.error as err:
        reason = err.args[0] if err.args else err
        reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else reason
        raise ValueError(f"{reason} (label regexes use RE2 syntax, as Teleport's do: no "
                         "backreferences or lookaround)") from None


def parse_trait_template(value: str) -> str | None:
    """The trait name in ``{{internal.db_users}}`` / ``{{external.x}}``; None for a literal.

    Both namespaces read the same traits map (internal traits are stored under their own
    names, e.g. ``db_users``). Raises ValueError for a malformed template.
    """
    if "{{" not in value and "}}" not in value:
        return None
    match = _TEMPLATE.fullmatch(value)
    if match is None:
        raise ValueError(
            f"malformed trait template {value!r}: expected {{{{internal.<trait>}}}} or "
            "{{external.<trait>}} as the whole value"
        )
    return match.group("dotted") or match.group("quoted")


@dataclass
class Rule:
    resources: list[str]
    verbs: list[str]
    where: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"resources": list(self.resources), "verbs": list(self.verbs)}
        if self.where:
            d["where"] = self.where
        return d


@dataclass
class RoleConditions:
    db_labels: LabelSelector = field(default_factory=dict)
    db_names: list[str] = field(default_factory=list)
    db_users: list[str] = field(default_factory=list)
    db_roles: list[str] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    node_labels: LabelSelector = field(default_factory=dict)
    app_labels: LabelSelector = field(default_factory=dict)

    def validate(self) -> None:
        for name in ("db_labels", "node_labels", "app_labels"):
            _check_selector(getattr(self, name), name)
        for name, check in (("db_names", names.db_name), ("db_users", names.db_user)):
            for i, value in enumerate(getattr(self, name)):
                try:
                    parse_trait_template(check(value))
                except ValueError as err:  # InvalidName is one
                    raise ConfigError(key=f"{name}[{i}]", message=str(err)) from None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for name in ("db_labels", "node_labels", "app_labels"):
            selector: LabelSelector = getattr(self, name)
            if selector:
                d[name] = {k: list(v) if isinstance(v, list) else v for k, v in selector.items()}
        for name in ("db_names", "db_users", "db_roles", "logins"):
            if getattr(self, name):
                d[name] = list(getattr(self, name))
        if self.rules:
            d["rules"] = [rule.to_dict() for rule in self.rules]
        return d


def _check_selector(selector: LabelSelector, name: str) -> None:
    for label, value in selector.items():
        try:
            names.label_key(label)  # the key only: values are globs or ^regex$
        except names.InvalidName as err:
            raise ConfigError(key=name, message=str(err)) from None
        values = [value] if isinstance(value, str) else value
        if label == "*" and values != ["*"]:
            # Teleport refuses this too: a wildcard key only makes sense as '*': '*'.
            raise ConfigError(
                key=f"{name}.{label}",
                message="a wildcard label key only works with a wildcard value ('*': '*')",
            )
        for pattern in values:
            _check_label_value(pattern, f"{name}.{label}")


def _check_label_value(pattern: str, key: str) -> None:
    if "{{" in pattern:
        raise ConfigError(key=key, message="trait templates in labels are not supported")
    if is_label_regex(pattern):
        try:
            compile_label_regex(pattern)
        except ValueError as err:
            message = f"invalid regular expression {pattern!r}: {err}"
            raise ConfigError(key=key, message=message) from None


@dataclass
class RoleOptions:
    max_session_ttl: timedelta | None = None  # None: DEFAULT_MAX_SESSION_TTL
    # Accepted so Teleport roles load; mwiproxy has no use for them yet.
    forward_agent: bool | None = None
    client_idle_timeout: timedelta | None = None
    # Database sessions end when their certificate expires; `false` here opts out
    # (see proxy/access.py: any role asking for the cut wins).
    disconnect_expired_cert: bool | None = None
    # Query audit of the database sessions this role grants (README "Query audit"):
    # None is the default, on with parameters hashed; rbac.query_audit_policy resolves
    # a session's roles (any role leaving it on keeps it on; the strictest parameters).
    query_audit: bool | None = None
    query_audit_parameters: Literal["hash", "omit", "plain"] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for name, value in vars(self).items():
            if value is not None:
                d[name] = format_duration(value) if isinstance(value, timedelta) else value
        return d


@dataclass
class _Metadata:
    name: str
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        try:
            names.role_name(self.name)
        except names.InvalidName as err:
            raise ConfigError(key="name", message=str(err)) from None


@dataclass
class _Spec:
    allow: RoleConditions = field(default_factory=RoleConditions)
    deny: RoleConditions = field(default_factory=RoleConditions)
    options: RoleOptions = field(default_factory=RoleOptions)


@dataclass
class _RoleDocument:
    """The YAML shape; turned into a flat Role once decoded."""

    kind: str
    version: Literal["v6", "v7"]
    metadata: _Metadata
    spec: _Spec = field(default_factory=_Spec)

    def validate(self) -> None:
        if self.kind != "role":
            raise ConfigError(
                key="kind", message=f'expected "role", got {self.kind!r}: only roles are accepted'
            )


@dataclass
class Role:
    name: str
    version: str = "v7"
    allow: RoleConditions = field(default_factory=RoleConditions)
    deny: RoleConditions = field(default_factory=RoleConditions)
    options: RoleOptions = field(default_factory=RoleOptions)
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def max_session_ttl(self) -> timedelta:
        return self.options.max_session_ttl or DEFAULT_MAX_SESSION_TTL

    def to_dict(self) -> dict[str, Any]:
        """The Teleport-shaped document; ``Role.from_dict`` and ``parse_roles`` read it back."""
        metadata: dict[str, Any] = {"name": self.name}
        if self.description:
            metadata["description"] = self.description
        if self.labels:
            metadata["labels"] = dict(self.labels)
        spec: dict[str, Any] = {"allow": self.allow.to_dict(), "deny": self.deny.to_dict()}
        if options := self.options.to_dict():
            spec["options"] = options
        return {"kind": "role", "version": self.version, "metadata": metadata, "spec": spec}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<stored>") -> Role:
        # Going through YAML reuses every check; errors then point into the dumped text.
        # A stored role passed the size limit when it was created; dumped, its lists may
        # be longer than the text it came from, and it must still load.
        roles = parse_roles(yaml.safe_dump(d, sort_keys=False), source, max_bytes=None)
        if len(roles) != 1:
            raise ConfigError("expected exactly one role", file=source)
        return roles[0]


def parse_roles(text: str, filename: str, *,
                max_bytes: int | None = MAX_YAML_BYTES) -> list[Role]:
    """Every document of a role file; each must be ``kind: role`` with a unique name."""
    roles: list[Role] = []
    first_line: dict[str, int] = {}
    for doc in load_yaml_documents(text, filename, max_bytes=max_bytes):
        try:
            role = _to_role(decode(doc, _RoleDocument, filename))
        except ConfigError as err:
            raise _naming_role(err, doc) from None
        if role.name in first_line:
            raise ConfigError(
                f"duplicate role {role.name!r} (first defined on line {first_line[role.name]})",
                file=filename,
                line=locate_line(doc, "metadata.name"),
                key="metadata.name",
            )
        first_line[role.name] = locate_line(doc, "metadata.name")
        roles.append(role)
    if not roles:
        raise ConfigError("no role found in the file", file=filename)
    return roles


def _naming_role(err: ConfigError, doc: Node) -> ConfigError:
    """The error, saying which role it is in: a file may hold many, and an error raised
    over the API is read far from the file."""
    name = _scalar_at(doc, "metadata", "name")
    if not name or err.key.startswith("metadata.name"):
        return err
    return ConfigError(f'{err.message} (role "{name}")', file=err.file, line=err.line,
                       key=err.key)


def _scalar_at(node: Node, *path: str) -> str:
    for step in path:
        if not isinstance(node, yaml.MappingNode):
            return ""
        found = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == step]
        if not found:
            return ""
        node = found[0]
    return str(node.value) if isinstance(node, yaml.ScalarNode) else ""


def _to_role(doc: _RoleDocument) -> Role:
    return Role(
        name=doc.metadata.name,
        version=doc.version,
        allow=doc.spec.allow,
        deny=doc.spec.deny,
        options=doc.spec.options,
        description=doc.metadata.description,
        labels=doc.metadata.labels,
    )
