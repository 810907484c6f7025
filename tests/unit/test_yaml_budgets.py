"""Hostile YAML and JSON: every file or payload the product parses is refused within a
budget (size, nesting depth, alias expansion) with file:line, never with a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from mwiproxy.auth.agents import MAX_LABEL_VALUE, MAX_LABELS, parse_database
from mwiproxy.auth.roles import parse_roles
from mwiproxy.config.bot import load_bot_config
from mwiproxy.config.cluster import load_cluster_config
from mwiproxy.config.loader import (
    MAX_YAML_ALIAS_NODES,
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    ConfigError,
    load_yaml_documents,
    load_yaml_file,
)
from mwiproxy.wire.frames import MAX_JSON_DEPTH, FrameError, decode_body


def alias_bomb(levels: int = 9) -> str:
    """"Billion laughs" as a role file: under 2 KB that expands to 9**levels strings."""
    lines = ['lol0: &lol0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"lol{i}: &lol{i} [" + ",".join([f"*lol{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# the anchors sit in unknown keys: the budget refuses the text before the schema is read
BOMB_ROLE = "kind: role\nversion: v7\nmetadata:\n  name: bomb\n" + alias_bomb() + (
    "spec:\n  allow:\n    logins: *lol8\n")


def deep_flow(depth: int) -> str:
    return "spec: " + "[" * depth + "]" * depth + "\n"


def deep_block(depth: int) -> str:
    return "spec:\n  " + "- " * depth + "x\n"  # compact nested block sequences


def test_the_alias_bomb_is_small_and_refused_at_the_alias_that_crosses_the_budget() -> None:
    assert len(BOMB_ROLE) < 2048
    with pytest.raises(ConfigError) as e:
        parse_roles(BOMB_ROLE, "bomb.yaml")
    assert e.value.file == "bomb.yaml"
    assert e.value.line is not None and 5 <= e.value.line <= 13  # one of the lol lines
    assert f"aliases expand to more than {MAX_YAML_ALIAS_NODES} nodes" in str(e.value)
    assert str(e.value).startswith(f"bomb.yaml:{e.value.line}: ")


@pytest.mark.parametrize("make", [deep_flow, deep_block], ids=["flow", "block"])
def test_deep_nesting_is_refused_not_a_recursion_error(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as e:
        load_yaml_documents(make(5000), "deep.yaml")
    assert f"nested deeper than {MAX_YAML_DEPTH} levels" in str(e.value)
    assert e.value.line is not None and e.value.file == "deep.yaml"


def test_nesting_up_to_the_limit_loads() -> None:
    (doc,) = load_yaml_documents(deep_flow(MAX_YAML_DEPTH - 2), "ok.yaml")  # + map + scalar
    assert doc.value[0][0].value == "spec"


def test_aliases_count_their_depth() -> None:
    # each anchor is 40 deep on its own; the third alias would nest 120 deep once expanded
    a = "a: &a " + "[" * 40 + "]" * 40
    b = "b: &b " + "[" * 20 + "*a" + "]" * 20
    c = "c: " + "[" * 20 + "*b" + "]" * 20
    with pytest.raises(ConfigError, match="deeper than 64 levels once this alias is expanded"):
        load_yaml_documents("\n".join([a, b, c]) + "\n", "chain.yaml")


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"rec.yaml:2: .*recursive aliases"):
        load_yaml_documents("a: &a\n  - *a\n", "rec.yaml")


def test_ordinary_aliases_still_work(tmp_path: Path) -> None:
    # the common use: one label set shared by many databases
    first = "  - {name: db0, protocol: postgres, uri: 'h:5432', static_labels: &common " \
            "{env: prod, team: db, region: eu}}\n"
    rest = "".join(f"  - {{name: db{i}, protocol: postgres, uri: 'h:5432', "
                   f"static_labels: *common}}\n" for i in range(1, 300))
    path = tmp_path / "cluster.yaml"
    path.write_text(f"version: v1\ncluster_name: example.local\ndata_dir: {tmp_path}\n"
                    f"databases:\n{first}{rest}")
    config = load_cluster_config(str(path))
    assert len(config.databases) == 300
    assert all(db.static_labels == {"env": "prod", "team": "db", "region": "eu"}
               for db in config.databases)


def test_text_over_the_size_limit_is_refused_before_parsing() -> None:
    text = "a: " + "x" * MAX_YAML_BYTES + "\n"
    with pytest.raises(ConfigError, match=f"more than the limit of {MAX_YAML_BYTES}"):
        parse_roles(text, "huge.yaml")


def test_a_file_over_the_size_limit_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.truncate(MAX_YAML_BYTES * 64)  # sparse: reading it whole would be the bug
    with pytest.raises(ConfigError) as e:
        load_yaml_file(str(path))
    assert str(e.value) == f"{path}: the file is larger than the limit of {MAX_YAML_BYTES} bytes"


def test_cluster_yaml_bomb_is_refused_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("version: v1\ncluster_name: example.local\n" + alias_bomb())
    with pytest.raises(ConfigError) as e:
        load_cluster_config(str(path))
    assert str(e.value).startswith(f"{path}:")
    assert e.value.line is not None and e.value.line > 2
    assert "aliases expand" in e.value.message


def test_tbot_yaml_deep_nesting_is_refused_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "tbot.yaml"
    path.write_text("version: v2\nproxy_server: proxy.example.com:3080\n" + deep_flow(5000))
    with pytest.raises(ConfigError) as e:
        load_bot_config(str(path))
    assert e.value.file == str(path) and e.value.line == 3
    assert "nested deeper than" in e.value.message


def test_tbot_yaml_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tbot.yaml"
    path.write_text("version: v2\n" + alias_bomb())
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: YAML aliases expand"):
        load_bot_config(str(path))


# ---- JSON frames of the auth API -------------------------------------------------------


def test_deep_json_frames_are_refused_not_a_recursion_error() -> None:
    body = b'{"id":1,"method":"ping","params":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    with pytest.raises(FrameError, match=f"nested deeper than {MAX_JSON_DEPTH} levels"):
        decode_body(body)


def test_json_just_over_the_depth_limit_is_refused_and_at_it_accepted() -> None:
    def frame(depth: int) -> bytes:  # the frame object itself is level 1
        inner = depth - 1
        return b'{"x":' + b"[" * inner + b"]" * inner + b"}"

    assert decode_body(frame(MAX_JSON_DEPTH))["x"]
    with pytest.raises(FrameError, match="nested deeper"):
        decode_body(frame(MAX_JSON_DEPTH + 1))


def test_wide_json_is_not_mistaken_for_deep() -> None:
    msg = decode_body(b'{"databases":[' + b",".join([b'{"labels":{"a":"[[[["}}'] * 500) + b"]}")
    assert len(msg["databases"]) == 500


# ---- agent heartbeats: labels are matched against every role --------------------------

PG = {"name": "agent-pg", "protocol": "postgres", "uri": "10.0.0.5:5432"}


@pytest.mark.parametrize(("labels", "why"), [
    ({"team": "a" * (MAX_LABEL_VALUE + 1)}, "value longer than"),
    ({f"k{i}": "v" for i in range(MAX_LABELS + 1)}, f"at most {MAX_LABELS}"),
    ({"team": "\ud800"}, "not valid Unicode"),
    ({"team": ["nested"]}, "labels must map non-empty strings to strings"),
], ids=["huge-value", "too-many", "lone-surrogate", "nested"])
def test_heartbeat_labels_out_of_bounds_are_refused(labels: dict, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_database({**PG, "labels": labels})


def test_heartbeat_labels_within_bounds_pass() -> None:
    labels = {f"k{i}": "v" * MAX_LABEL_VALUE for i in range(MAX_LABELS)}
    assert parse_database({**PG, "labels": labels}).static_labels == labels
