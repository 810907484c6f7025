"""Strict YAML → dataclass decoding whose errors name the file, line and key.

We decode from PyYAML's node graph (``compose``) rather than from plain Python objects
so that every value still knows where it came from: an operator who mistypes
``db_lables`` must be told ``role.yaml:7: spec.allow.db_lables: unknown field
(did you mean "db_labels"?)``, not just that something is wrong.

Field options go in ``dataclasses.field(metadata=...)``:

* ``{"yaml": "other-name"}``: the YAML key, when it is not the field name.
* ``{"deprecated": "old_name"}`` (or a list): old spellings still read, with a logged
  warning; the new name wins when both are present.

After a dataclass is built its ``validate()`` method, if any, is called. It may raise
``ConfigError(key="sub.key", message=...)`` with a key relative to the dataclass; the
decoder turns that into an absolute key and finds its line.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Literal, TypeVar

import yaml

from mwiproxy.config.durations import parse_duration
from mwiproxy.config.yaml_budget import (
    MAX_YAML_ALIAS_NODES,
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    BudgetLoader,
    OverBudget,
)

__all__ = [
    "ConfigError",
    "Node",
    "decode",
    "decode_text",
    "join_key",
    "MAX_YAML_ALIAS_NODES",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "load_yaml_documents",
    "load_yaml_file",
    "locate_line",
    "node_line",
]

log = logging.getLogger("mwiproxy.config")

Node = yaml.Node
T = TypeVar("T")

_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"
_TAG_NAMES = {
    _NULL_TAG: "null",
    _STR_TAG: "string",
    "tag:yaml.org,2002:int": "integer",
    "tag:yaml.org,2002:float": "float",
    "tag:yaml.org,2002:bool": "boolean",
}


class ConfigError(ValueError):
    """A configuration problem, located as precisely as we know."""

    def __init__(
        self,
        message: str = "",
        *,
        file: str = "",
        line: int | None = None,
        key: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.key = key

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        return ": ".join(part for part in (where, self.key, self.message) if part)

    def __reduce__(self) -> Any:
        # Keyword-only attributes would otherwise be lost when pickled (multiprocessing).
        return (_rebuild_error, (self.message, self.file, self.line, self.key))


def _rebuild_error(message: str, file: str, line: int | None, key: str) -> ConfigError:
    return ConfigError(message, file=file, line=line, key=key)


def resolve_token(value: str, key: str) -> str:
    """A join token given in a config file: the value itself, or the content of the file
    when it is an absolute path (so the secret need not sit in the config)."""
    if not value.startswith("/"):
        return value
    try:
        with open(value, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise ConfigError(f"cannot read token file {value}: {e.strerror}", key=key) from e


def join_key(prefix: str, key: str) -> str:
    """``join_key("spec", "allow")`` → ``spec.allow``; list indexes attach without a dot."""
    if not prefix:
        return key
    if not key:
        return prefix
    return prefix + key if key.startswith("[") else f"{prefix}.{key}"


def node_line(node: Node) -> int:
    """1-based line where a node starts."""
    return int(node.start_mark.line) + 1


# --------------------------------------------------------------------------- loading


def load_yaml_documents(text: str, filename: str, *,
                        max_bytes: int | None = MAX_YAML_BYTES) -> list[Node]:
    """Compose every document of a YAML stream within the budgets above; empty documents
    are skipped. ``max_bytes=None`` only for text the product wrote itself from something
    that passed the limit once (its canonical form may be longer than what was read)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if max_bytes is not None and size > max_bytes:
        raise ConfigError(f"{size} bytes of YAML is more than the limit of {max_bytes}",
                          file=filename)
    loader = BudgetLoader(text)
    try:
        docs = []
        while loader.check_node():
            docs.append(loader.get_node())
    except OverBudget as err:
        raise ConfigError(err.message, file=filename, line=int(err.mark.line) + 1) from None
    except yaml.MarkedYAMLError as err:
        raise _syntax_error(err, filename) from None
    except yaml.YAMLError as err:  # e.g. a control character in the input
        raise ConfigError(f"invalid YAML: {err}", file=filename) from None
    except RecursionError:  # the depth budget should make this unreachable; never a traceback
        raise ConfigError("YAML nested too deeply", file=filename) from None
    finally:
        loader.dispose()
    result = [doc for doc in docs if doc is not None and not _is_empty(doc)]
    for doc in result:
        _check_duplicate_keys(doc, filename)
    return result


def load_yaml_file(path: str) -> list[Node]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)  # no more than the limit needs to refuse it
    except FileNotFoundError:
        raise ConfigError("file not found", file=path) from None
    except OSError as err:
        raise ConfigError(f"cannot read file: {err}", file=path) from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"the file is larger than the limit of {MAX_YAML_BYTES} bytes",
                          file=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"cannot read file: {err}", file=path) from None
    return load_yaml_documents(text, path)


def _syntax_error(err: yaml.MarkedYAMLError, filename: str) -> ConfigError:
    mark = err.problem_mark or err.context_mark
    line = int(mark.line) + 1 if mark is not None else None
    detail = ": ".join(p for p in (err.context, err.problem) if p) or str(err)
    if err.context_mark is not None and err.problem_mark is not None:
        context_line = int(err.context_mark.line) + 1
        if context_line != line:
            detail += f" (the construct began on line {context_line})"
    return ConfigError(f"invalid YAML: {detail}", file=filename, line=line)


def _is_empty(node: Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG and node.value == ""


def _check_duplicate_keys(root: Node, filename: str) -> None:
    # The composer keeps every (key, value) pair, so duplicates survive to this point;
    # PyYAML's constructor would silently keep the last one, which hides typos.
    for path, node in _walk_mappings(root):
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            if key_node.value in seen:
                raise ConfigError(
                    f"duplicate key (first given on line {seen[key_node.value]})",
                    file=filename,
                    line=node_line(key_node),
                    key=join_key(path, key_node.value),
                )
            seen[key_node.value] = node_line(key_node)


def _walk_mappings(root: Node) -> Iterator[tuple[str, yaml.MappingNode]]:
    visited: set[int] = set()  # aliases may make the graph shared or even recursive
    stack: list[tuple[str, Node]] = [("", root)]
    while stack:
        path, node = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            yield path, node
            for key_node, value in node.value:
                stack.append((join_key(path, str(key_node.value)), value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(node.value))


# --------------------------------------------------------------------------- decoding


def decode(node: Node, cls: type[T], filename: str, key: str = "") -> T:
    """Decode ``node`` into ``cls`` (usually a dataclass), strictly."""
    value: T = _Decoder(filename).value(node, cls, key)
    return value


def decode_text(text: str, cls: type[T], filename: str) -> T:
    """Decode a file that must hold exactly one YAML document."""
    docs = load_yaml_documents(text, filename)
    if not docs:
        raise ConfigError("the file is empty", file=filename)
    if len(docs) > 1:
        raise ConfigError(
            f"expected a single YAML document, found {len(docs)}",
            file=filename,
            line=node_line(docs[1]),
        )
    return decode(docs[0], cls, filename)


class _Decoder:
    def __init__(self, filename: str) -> None:
        self.filename = filename

    def error(self, node: Node | None, key: str, message: str) -> ConfigError:
        line = node_line(node) if node is not None else None
        return ConfigError(message, file=self.filename, line=line, key=key)

    def construct(self, node: Node, key: str) -> Any:
        try:
            return _construct(node)
        except yaml.YAMLError as err:  # unknown tags (!foo), recursive aliases
            problem = getattr(err, "problem", None) or str(err)
            raise self.error(node, key, f"cannot read value: {problem}") from None

    def value(self, node: Node, tp: Any, key: str) -> Any:
        """Decode one node according to a type annotation."""
        if tp is Any or tp is object:
            return self.construct(node, key)
        origin = typing.get_origin(tp)
        if origin is typing.Union or origin is types.UnionType:
            return self.union(node, typing.get_args(tp), key)
        if origin is Literal:
            return self.literal(node, typing.get_args(tp), key)
        if origin in (list, tuple, dict):
            return self.container(node, tp, origin, key)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.dataclass(node, tp, key)
        return self.scalar(node, tp, key)

    # -- scalars

    def scalar(self, node: Node, tp: Any, key: str) -> Any:
        if tp is timedelta:
            return self.duration(node, key)
        if tp not in (str, int, float, bool):
            raise TypeError(f"{key or 'value'}: unsupported field type {tp!r}")
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, key, f"expected {_type_name(tp)}, got {_node_kind(node)}")
        value = self.construct(node, key)
        if _scalar_fits(value, tp):
            return float(value) if tp is float else value
        hint = " (quote it to make it a string)" if tp is str else ""
        raise self.error(node, key, f"expected {_type_name(tp)}, got {_node_kind(node)}{hint}")

    def duration(self, node: Node, key: str) -> timedelta:
        value = self.construct(node, key) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise self.error(node, key, f"expected a duration like 1h30m, got {_node_kind(node)}")
        try:
            return parse_duration(value)
        except ValueError as err:
            raise self.error(node, key, str(err)) from None

    def literal(self, node: Node, allowed: tuple[Any, ...], key: str) -> Any:
        value = self.construct(node, key) if isinstance(node, yaml.ScalarNode) else None
        for choice in allowed:
            # compare with the type too, so `true` does not pass for `1`
            if type(value) is type(choice) and value == choice:
                return choice
        shown = ", ".join(repr(choice) for choice in allowed)
        got = repr(value) if isinstance(node, yaml.ScalarNode) else _node_kind(node)
        raise self.error(node, key, f"invalid value {got}: must be one of {shown}")

    # -- unions

    def union(self, node: Node, arms: tuple[Any, ...], key: str) -> Any:
        if type(None) in arms and _is_null(node):
            return None
        candidates = [arm for arm in arms if arm is not type(None) and _accepts(arm, node)]
        first_error: ConfigError | None = None
        for arm in candidates:
            try:
                return self.value(node, arm, key)
            except ConfigError as err:
                first_error = first_error or err
        if first_error is not None:  # the arm that fit the node's shape best says why
            raise first_error
        expected = " or ".join(_type_name(arm) for arm in arms)
        raise self.error(node, key, f"expected {expected}, got {_node_kind(node)}")

    # -- containers

    def container(self, node: Node, tp: Any, origin: Any, key: str) -> Any:
        args = typing.get_args(tp)
        if origin is dict:
            return self.mapping(node, args[1] if len(args) == 2 else Any, key)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            raise TypeError(f"{key or 'value'}: only tuple[T, ...] is supported, not {tp!r}")
        items = self.sequence(node, args[0] if args else Any, key)
        return tuple(items) if origin is tuple else items

    def sequence(self, node: Node, item_tp: Any, key: str) -> list[Any]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, key, f"expected a list, got {_node_kind(node)}")
        return [self.value(item, item_tp, f"{key}[{i}]") for i, item in enumerate(node.value)]

    def mapping(self, node: Node, value_tp: Any, key: str) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for name, _key_node, value_node in self.pairs(node, key):
            result[name] = self.value(value_node, value_tp, join_key(key, name))
        return result

    def pairs(self, node: Node, key: str) -> Iterator[tuple[str, Node, Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, key, f"expected a mapping, got {_node_kind(node)}")
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                raise self.error(key_node, key, f"keys must be strings, got {_node_kind(key_node)}")
            yield key_node.value, key_node, value_node

    # -- dataclasses

    def dataclass(self, node: Node, cls: type, key: str) -> Any:
        spec = _DataclassSpec.of(cls)
        given: dict[str, tuple[str, Node, Node]] = {}
        for name, key_node, value_node in self.pairs(node, key):
            self.assign(spec, given, name, key_node, value_node, key)
        kwargs = {}
        for field in spec.fields:
            entry = given.get(field.name)
            if entry is None or (_is_null(entry[2]) and _has_default(field)):
                if not _has_default(field):
                    where = entry[1] if entry else node
                    raise self.error(
                        where, join_key(key, spec.yaml_name[field.name]), "is required"
                    )
                continue
            kwargs[field.name] = self.value(
                entry[2], spec.hints[field.name], join_key(key, entry[0])
            )
        instance = cls(**kwargs)
        self.run_validate(instance, node, key)
        return instance

    def assign(
        self,
        spec: _DataclassSpec,
        given: dict[str, tuple[str, Node, Node]],
        name: str,
        key_node: Node,
        value_node: Node,
        key: str,
    ) -> None:
        field_name = spec.by_yaml.get(name)
        if field_name is not None:
            given[field_name] = (name, key_node, value_node)
            return
        field_name = spec.by_deprecated.get(name)
        if field_name is None:
            raise self.error(key_node, join_key(key, name), _unknown_field(name, spec))
        new_name = spec.yaml_name[field_name]
        log.warning(
            "%s:%d: %s: %r is deprecated, use %r instead",
            self.filename,
            node_line(key_node),
            join_key(key, name),
            name,
            new_name,
        )
        # The new spelling wins whatever the order in the file.
        if field_name not in given or given[field_name][0] != new_name:
            given[field_name] = (name, key_node, value_node)

    def run_validate(self, instance: Any, node: Node, key: str) -> None:
        validate = getattr(instance, "validate", None)
        if not callable(validate):
            return
        try:
            validate()
        except ConfigError as err:
            if err.file:
                raise
            raise ConfigError(
                err.message,
                file=self.filename,
                line=err.line if err.line is not None else locate_line(node, err.key),
                key=join_key(key, err.key),
            ) from None


class _DataclassSpec:
    """The YAML view of a dataclass: key spellings and resolved field types."""

    _cache: dict[type, _DataclassSpec] = {}

    def __init__(self, cls: type) -> None:
        self.fields = [f for f in dataclasses.fields(cls) if f.init]
        self.hints = typing.get_type_hints(cls)
        self.yaml_name = {f.name: str(f.metadata.get("yaml", f.name)) for f in self.fields}
        self.by_yaml = {yaml_key: name for name, yaml_key in self.yaml_name.items()}
        self.by_deprecated: dict[str, str] = {}
        for f in self.fields:
            old = f.metadata.get("deprecated", ())
            for old_name in [old] if isinstance(old, str) else old:
                self.by_deprecated[old_name] = f.name

    @classmethod
    def of(cls, dataclass_type: type) -> _DataclassSpec:
        spec = cls._cache.get(dataclass_type)
        if spec is None:
            spec = cls._cache[dataclass_type] = cls(dataclass_type)
        return spec


def _unknown_field(name: str, spec: _DataclassSpec) -> str:
    known = list(spec.by_yaml)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    # difflib misses abbreviations such as "ca" for "ca_file"; a shared prefix catches them
    close = close or [k for k in known if name and (k.startswith(name) or name.startswith(k))][:1]
    hint = f' (did you mean "{close[0]}"?)' if close else f" (known fields: {', '.join(known)})"
    return f"unknown field{hint}"


def _has_default(field: dataclasses.Field[Any]) -> bool:
    return (
        field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    )


def locate_line(node: Node, rel_key: str) -> int:
    """Line of ``rel_key`` (e.g. ``tls.mode`` or ``databases[1]``) below ``node``.

    Mapping keys may themselves contain dots (label names such as ``teleport.dev/x``), so
    at each mapping we take the longest key that is a prefix of what remains.
    """
    line = node_line(node)
    rest = rel_key
    while rest:
        step = _step(node, rest)
        if step is None:
            break
        line, node, rest = step
    return line


def _step(node: Node, rest: str) -> tuple[int, Node, str] | None:
    if isinstance(node, yaml.SequenceNode) and rest.startswith("["):
        index_text, _, remaining = rest[1:].partition("]")
        if not index_text.isdigit() or int(index_text) >= len(node.value):
            return None
        item = node.value[int(index_text)]
        return node_line(item), item, remaining.lstrip(".")
    if not isinstance(node, yaml.MappingNode):
        return None
    best: tuple[Node, Node] | None = None
    for key_node, value_node in node.value:
        name = str(key_node.value)
        if rest == name or rest.startswith((name + ".", name + "[")):
            if best is None or len(name) > len(str(best[0].value)):
                best = (key_node, value_node)
    if best is None:
        return None
    return node_line(best[0]), best[1], rest[len(str(best[0].value)) :].lstrip(".")


# --------------------------------------------------------------------------- helpers


def _construct(node: Node) -> Any:
    """The plain Python value of a node, as PyYAML's safe loader would build it."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _is_null(node: Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG


def _scalar_fits(value: Any, tp: Any) -> bool:
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _accepts(tp: Any, node: Node) -> bool:
    """Could ``tp`` decode this kind of node? Used to pick a union arm."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return True
    if origin in (list, tuple):
        return isinstance(node, yaml.SequenceNode)
    if origin is dict or dataclasses.is_dataclass(tp):
        return isinstance(node, yaml.MappingNode)
    if origin is typing.Union or origin is types.UnionType:
        return any(_accepts(arm, node) for arm in typing.get_args(tp))
    return isinstance(node, yaml.ScalarNode)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin in (list, tuple):
        item = _type_name(typing.get_args(tp)[0]).removeprefix("a ").removeprefix("an ")
        return f"a list of {item}"
    if origin is dict:
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean (true/false)",
        timedelta: "a duration",
    }
    return names.get(tp, getattr(tp, "__name__", repr(tp)))


def _node_kind(node: Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = _TAG_NAMES.get(node.tag, node.tag)
    return f"{kind} {node.value!r}" if node.tag != _NULL_TAG else "null"


def address_list(node: Node, key: str, filename: str, prefix: str = "") -> Node:
    """`proxy_server: [a:3080, b:3080]` (tbot.yaml) or `auth_server: [...]`
    (cluster.yaml's db_service) reads as `a:3080,b:3080`: one spelling inside."""
    if key not in ("proxy_server", "auth_server") or not isinstance(node, yaml.SequenceNode):
        return node
    items = []
    for item in node.value:
        if not isinstance(item, yaml.ScalarNode) or not item.value:
            raise ConfigError("expected a list of host:port", file=filename,
                              line=node_line(item), key=prefix + key)
        items.append(item.value)
    if not items:
        raise ConfigError("an empty list: name at least one address", file=filename,
                          line=node_line(node), key=prefix + key)
    joined = yaml.ScalarNode("tag:yaml.org,2002:str", ",".join(items))
    joined.start_mark, joined.end_mark = node.start_mark, node.end_mark
    return joined
