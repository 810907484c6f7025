"""The process log's formatters (process/logs.py) and the audit mirror's shape."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

from mwiproxy.auth import audit_writer
from mwiproxy.process import logs

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def record(msg: str = "hello %s", args: tuple[object, ...] = ("world",), *,
           extra: dict[str, object] | None = None, exc: bool = False) -> logging.LogRecord:
    logger = logging.getLogger("mwiproxy.test")
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            import sys
            exc_info = sys.exc_info()
    return logger.makeRecord("mwiproxy.test", logging.WARNING, __file__, 1, msg, args,
                             exc_info, extra=extra)


def test_json_line_parses_with_rfc3339_utc_time():
    rec = record()
    line = json.loads(logs.JSONFormatter().format(rec))
    assert line["msg"] == "hello world" and line["level"] == "WARNING"
    assert line["logger"] == "mwiproxy.test"
    assert RFC3339_Z.match(line["time"]), line["time"]
    parsed = dt.datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
    assert abs(parsed.timestamp() - rec.created) < 0.001


def test_json_extra_fields_are_top_level_and_typed():
    class Odd:
        def __str__(self) -> str:
            return "odd-value"

    extra = {"conn_id": 7, "client": "127.0.0.1:5000", "bytes": 1.5, "tunnel": True,
             "user": None, "dbs": ["a", "b"], "labels": {"env": "dev"}, "odd": Odd(),
             "pair": ("x", 1)}
    line = json.loads(logs.JSONFormatter().format(record(extra=extra)))
    assert {k: line[k] for k in extra} == {
        "conn_id": 7, "client": "127.0.0.1:5000", "bytes": 1.5, "tunnel": True,
        "user": None, "dbs": ["a", "b"], "labels": {"env": "dev"}, "odd": "odd-value",
        "pair": ["x", 1]}


def test_json_exception_has_the_traceback():
    line = json.loads(logs.JSONFormatter().format(record(exc=True)))
    assert "Traceback (most recent call last)" in line["exception"]
    assert "RuntimeError: boom" in line["exception"]


def test_text_line_rfc3339_and_extras_as_key_value():
    text = logs.TextFormatter().format(record(extra={"conn_id": 7, "client": "a b",
                                                     "dbs": ["x"], "plain": "word"}))
    stamp, rest = text.split(" ", 1)
    assert RFC3339_Z.match(stamp), stamp
    assert rest == ('WARNING mwiproxy.test: hello world conn_id=7 client="a b" '
                    'dbs=["x"] plain=word')


def test_text_extra_value_cannot_forge_a_line():
    text = logs.TextFormatter().format(record(extra={"user": "x\nERROR forged"}))
    assert "\n" not in text and 'user="x\\nERROR forged"' in text


def test_text_exception_follows_the_message():
    text = logs.TextFormatter().format(record(exc=True))
    first, *more = text.splitlines()
    assert first.endswith("hello world")
    assert "RuntimeError: boom" in "\n".join(more)


def test_audit_event_is_an_object_in_the_log(caplog):
    caplog.set_level(logging.INFO, logger="mwiproxy.audit")
    audit_writer.log_event((1_700_000_000.25, "bot.join", {
        "bot": "b1", "roles": ["r"], "expires": 1_700_003_600.0}), 42)
    (rec,) = [r for r in caplog.records if r.name == "mwiproxy.audit"]
    line = json.loads(logs.JSONFormatter().format(rec))
    assert line["msg"] == "audit"
    assert line["event"] == {"id": 42, "time": "2023-11-14T22:13:20.250Z",
                             "type": "bot.join", "bot": "b1", "roles": ["r"],
                             "expires": "2023-11-14T23:13:20.000Z"}


def test_setup_replaces_its_own_handler_only():
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        logs.setup("json", "debug")
        logs.setup("text", "info")
        ours = [h for h in root.handlers if h not in before]
        assert len(ours) == 1 and isinstance(ours[0].formatter, logs.TextFormatter)
        assert root.level == logging.INFO
    finally:
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)
        root.setLevel(level)


def test_unknown_format_is_refused():
    try:
        logs.formatter("xml")
    except ValueError as e:
        assert "text or json" in str(e)
    else:
        raise AssertionError("xml accepted")


def test_cluster_yaml_log_format_is_checked_with_file_line_key(tmp_path):
    from mwiproxy.config.cluster import load_cluster_config
    from mwiproxy.config.loader import ConfigError

    path = tmp_path / "cluster.yaml"
    path.write_text("version: v1\nlog:\n  level: info\n  format: json\n")
    assert load_cluster_config(str(path)).log.format == "json"
    path.write_text("version: v1\nlog:\n  level: info\n  format: xml\n")
    try:
        load_cluster_config(str(path))
    except ConfigError as e:
        assert str(e).startswith(f"{path}:4: log.format: invalid value 'xml'"), str(e)
    else:
        raise AssertionError("format: xml accepted")


def test_a_cycle_is_shown_not_a_recursion_error():
    cycle: list[object] = []
    cycle.append(cycle)
    line = json.loads(logs.JSONFormatter().format(record(extra={"cycle": cycle})))
    assert "[...]" in json.dumps(line["cycle"])
    assert "[...]" in json.dumps(logs.with_rfc3339_times({"cycle": cycle}))
