from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy.config.loader import (
    ConfigError,
    decode,
    decode_text,
    load_yaml_documents,
    load_yaml_file,
)


@dataclass
class TLS:
    mode: Literal["verify-full", "verify-ca", "insecure"] = "verify-full"
    ca_file: str = ""

    def validate(self) -> None:
        if self.mode == "insecure" and self.ca_file:
            raise ConfigError(key="ca_file", message="makes no sense with mode insecure")


@dataclass
class Service:
    name: str
    port: int = 0
    ratio: float = 1.0
    enabled: bool = True
    ttl: timedelta = field(
        default=timedelta(hours=1), metadata={"deprecated": ["certificate_ttl", "cert_ttl"]}
    )
    listen: str = field(default="", metadata={"yaml": "listen-addr"})
    tls: TLS = field(default_factory=TLS)
    roles: str | list[str] = ""
    labels: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    owner: str | None = None
    extra: Any = None


@dataclass
class Top:
    services: list[Service] = field(default_factory=list)
    version: Literal["v1"] = "v1"

    def validate(self) -> None:
        names = [s.name for s in self.services]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(key=f"services[{i}].name", message="duplicate name")


def decode_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        decode_text(text, Top, "cfg.yaml")
    return info.value


def test_decodes_every_supported_type() -> None:
    text = """\
version: v1
services:
  - name: a
    port: 5432
    ratio: 2
    enabled: false
    ttl: 20m
    listen-addr: 127.0.0.1:1
    tls: {mode: verify-ca, ca_file: /ca.pem}
    roles: [x, y]
    labels: {env: dev}
    tags: [t1, t2]
    owner: bob
    extra: {anything: [1, 2]}
  - name: b
    roles: solo
    owner:
"""
    top = decode_text(text, Top, "cfg.yaml")
    a, b = top.services
    assert a == Service(
        name="a",
        port=5432,
        ratio=2.0,
        enabled=False,
        ttl=timedelta(minutes=20),
        listen="127.0.0.1:1",
        tls=TLS("verify-ca", "/ca.pem"),
        roles=["x", "y"],
        labels={"env": "dev"},
        tags=("t1", "t2"),
        owner="bob",
        extra={"anything": [1, 2]},
    )
    assert isinstance(a.ratio, float)
    assert b.roles == "solo" and b.owner is None and b.tls == TLS()


ERRORS = [
    # (yaml, line, key, fragment of message)
    ("services:\n  - name: a\n    prot: 1\n", 3, "services[0].prot", 'did you mean "port"'),
    ("services:\n  - name: a\n    tls:\n      mdoe: x\n", 4, "services[0].tls.mdoe", '"mode"'),
    ("services:\n  - port: 1\n", 2, "services[0].name", "is required"),
    ("services:\n  - name:\n", 2, "services[0].name", "expected a string, got null"),
    ("services:\n  - name: 12\n", 2, "services[0].name", "quote it"),
    ("services:\n  - name: a\n    port: '1'\n", 3, "services[0].port", "expected an integer"),
    ("services:\n  - name: a\n    port: true\n", 3, "services[0].port", "expected an integer"),
    ("services:\n  - name: a\n    ratio: x\n", 3, "services[0].ratio", "expected a number"),
    ("services:\n  - name: a\n    enabled: 1\n", 3, "services[0].enabled", "expected a boolean"),
    ("services:\n  - name: a\n    ttl: 1d\n", 3, "services[0].ttl", "unknown unit 'd'"),
    ("services:\n  - name: a\n    ttl: [1]\n", 3, "services[0].ttl", "expected a duration"),
    (
        "services:\n  - name: a\n    tls: {mode: off}\n",
        3,
        "services[0].tls.mode",
        "must be one of 'verify-full', 'verify-ca', 'insecure'",
    ),
    ("services:\n  - name: a\n    roles: {a: b}\n", 3, "services[0].roles", "a list of string"),
    ("services:\n  - name: a\n    roles: [[x]]\n", 3, "services[0].roles[0]", "expected a string"),
    ("services:\n  - name: a\n    labels: [x]\n", 3, "services[0].labels", "expected a mapping"),
    ("services:\n  - name: a\n    labels: {x: 1}\n", 3, "services[0].labels.x", "a string"),
    ("services:\n  - name: a\n    tags: x\n", 3, "services[0].tags", "expected a list"),
    ("services:\n  - name: a\n    labels: {1: x}\n", 3, "services[0].labels", "keys must be"),
    ("services: {}\n", 1, "services", "expected a list, got a mapping"),
    ("services:\n  -\n", 2, "services[0]", "expected a mapping, got null"),
    ("version: v2\n", 1, "version", "must be one of 'v1'"),
    ("- a\n", 1, "", "expected a mapping, got a list"),
    (
        "services:\n  - name: a\n    tls:\n      mode: insecure\n      ca_file: /x\n",
        5,
        "services[0].tls.ca_file",
        "makes no sense",
    ),
    ("services:\n  - name: a\n  - name: b\n  - name: a\n", 4, "services[2].name", "duplicate"),
    ("services:\n  - name: a\n    name: b\n", 3, "services[0].name", "duplicate key"),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment"), ERRORS, ids=[f"{e[2] or 'root'}-{e[3]}" for e in ERRORS]
)
def test_errors_name_file_line_and_key(text: str, line: int, key: str, fragment: str) -> None:
    err = decode_error(text)
    assert (err.file, err.line, err.key) == ("cfg.yaml", line, key)
    assert fragment in err.message
    assert str(err).startswith(f"cfg.yaml:{line}: {key + ': ' if key else ''}")


def test_unknown_field_without_close_match_lists_known_fields() -> None:
    err = decode_error("services:\n  - name: a\n    zzzzzz: 1\n")
    assert "known fields: name, port" in err.message


def test_unknown_field_message_format() -> None:
    err = decode_error("servcies: []\n")
    assert str(err) == 'cfg.yaml:1: servcies: unknown field (did you mean "services"?)'


GARBAGE = [
    ("services: [a\n", 2),
    ("a: b: c\n", 1),
    ("services:\n  - name: a\n   bad indent: 1\n", 3),
    ("\tkey: 1\n", 1),
    ('x: "unterminated\n', 2),
]


@pytest.mark.parametrize(("text", "line"), GARBAGE, ids=[repr(t) for t, _ in GARBAGE])
def test_garbage_yaml(text: str, line: int) -> None:
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_yaml_documents(text, "g.yaml")
    assert (info.value.file, info.value.line) == ("g.yaml", line)


def test_duplicate_keys_anywhere() -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml_documents("a:\n  b: [{c: 1, c: 2}]\n", "d.yaml")
    assert info.value.key == "a.b[0].c"
    assert info.value.line == 2
    assert "first given on line 2" in info.value.message


def test_multi_document_and_empty_documents() -> None:
    docs = load_yaml_documents("---\na: 1\n---\n---\nb: 2\n", "m.yaml")
    assert len(docs) == 2
    assert load_yaml_documents("", "e.yaml") == []


def test_decode_text_requires_one_document() -> None:
    with pytest.raises(ConfigError, match="the file is empty"):
        decode_text("# only a comment\n", Top, "e.yaml")
    with pytest.raises(ConfigError, match="single YAML document") as info:
        decode_text("a: 1\n---\nb: 2\n", Top, "m.yaml")
    assert info.value.line == 3


def test_decode_with_key_prefix() -> None:
    (doc,) = load_yaml_documents("tls: {mode: nope}\n", "p.yaml")
    with pytest.raises(ConfigError) as info:
        decode(doc.value[0][1], TLS, "p.yaml", key="outer.tls")
    assert info.value.key == "outer.tls.mode"


def test_aliases_are_followed() -> None:
    text = "services:\n  - &base {name: a, port: 1}\n  - {name: b, port: 2}\n"
    top = decode_text(text, Top, "a.yaml")
    assert [s.port for s in top.services] == [1, 2]


DEPRECATED = [
    ("certificate_ttl: 5m\n", timedelta(minutes=5)),
    ("cert_ttl: 5m\n", timedelta(minutes=5)),
    ("ttl: 1m\n    certificate_ttl: 5m\n", timedelta(minutes=1)),
    ("certificate_ttl: 5m\n    ttl: 1m\n", timedelta(minutes=1)),
]


@pytest.mark.parametrize(
    ("extra", "ttl"), DEPRECATED, ids=["old", "older", "new-first", "old-first"]
)
def test_deprecated_spelling_warns_and_new_wins(
    extra: str, ttl: timedelta, caplog: pytest.LogCaptureFixture
) -> None:
    text = f"services:\n  - name: a\n    {extra}"
    with caplog.at_level(logging.WARNING, logger="mwiproxy.config"):
        top = decode_text(text, Top, "dep.yaml")
    assert top.services[0].ttl == ttl
    assert "dep.yaml:" in caplog.text and "deprecated" in caplog.text


def test_load_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a: 1\n")
    assert len(load_yaml_file(str(path))) == 1
    with pytest.raises(ConfigError, match="file not found") as info:
        load_yaml_file(str(tmp_path / "missing.yaml"))
    assert info.value.file.endswith("missing.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml_file(str(tmp_path))


def test_error_str_without_position() -> None:
    assert str(ConfigError("boom")) == "boom"
    assert str(ConfigError("boom", key="a.b")) == "a.b: boom"
    assert str(ConfigError("boom", file="f", key="k")) == "f: k: boom"
    assert str(ConfigError("boom", line=3)) == "line 3: boom"
    assert isinstance(ConfigError("x"), ValueError)


def test_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(ConfigError("m", file="f", line=2, key="k")))
    assert (err.message, err.file, err.line, err.key) == ("m", "f", 2, "k")


@dataclass
class Dest:
    path: str
    mode: Literal["0700", "0755"] = "0700"


@dataclass
class WithUnion:
    dest: str | Dest


@pytest.mark.parametrize(
    ("text", "expected"),
    [("dest: /tmp/x\n", "/tmp/x"), ("dest: {path: /tmp/y}\n", Dest("/tmp/y"))],
    ids=["scalar", "mapping"],
)
def test_scalar_or_dataclass_union(text: str, expected: object) -> None:
    assert decode_text(text, WithUnion, "u.yaml").dest == expected


def test_union_error_comes_from_the_arm_that_fits() -> None:
    with pytest.raises(ConfigError) as info:
        decode_text("dest:\n  path: /x\n  mode: '0777'\n", WithUnion, "u.yaml")
    assert (info.value.line, info.value.key) == (3, "dest.mode")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("services:\n  - name: !foo x\n", "could not determine a constructor"),
        ("services:\n  - &a {name: x, extra: *a}\n", "recursive"),
        ("services:\n  - name: a\n    tls: {mode: !!binary aGk=}\n", "must be one of"),
        ("? [a]\n: b\n", "keys must be strings"),
    ],
    ids=["unknown-tag", "recursive-alias", "binary", "complex-key"],
)
def test_odd_yaml_is_a_config_error(text: str, fragment: str) -> None:
    assert fragment in decode_error(text).message


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abns :-[]{}'\"\n!&*?#|>0123456789.", max_size=80))
def test_any_text_gives_a_result_or_a_config_error(text: str) -> None:
    try:
        decode_text(text, Top, "fuzz.yaml")
    except ConfigError:
        pass
