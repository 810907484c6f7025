"""proxy/mgoqueryaudit.py: the MongoDB tap's records become audit events (shape, digest
or plain JSON per policy, secrets, results and failures, untracked, malformed); and the
recorded document's rendering stays bounded on cut and hostile input."""

from __future__ import annotations

import json
import random

import bson
from hypothesis import given, settings
from hypothesis import strategies as st

from mwiproxy._native import mgoaudit_py
from mwiproxy.proxy.mgoqueryaudit import MongoQueryAudit, render
from mwiproxy.proxy.queryaudit import QueryAuditPolicy
from tests.unit.native import myauditkit as kit
from tests.unit.native.mgoauditkit import op_compressed, op_msg, session
from tests.unit.proxy.test_queryaudit import WHO, Sink


def _events(chunks: list[kit.Chunk], mode: str = "hash") -> Sink:
    sink = Sink()
    qa = MongoQueryAudit(sink, WHO, QueryAuditPolicy(True, mode), key=b"k")
    tap = mgoaudit_py.Tap()
    kit.run(tap, chunks)
    qa.on_records(tap.records)
    return sink


FIND = {"find": "orders", "filter": {"qty": {"$gt": 5}, "who": "zed"}, "$db": "shop"}
CHUNKS = [(0, op_msg(1, FIND)), (1, op_msg(0, {"cursor": {"firstBatch": [{}, {}]}, "ok": 1},
                                           to=1)),
          (0, op_msg(2, {"drop": "x", "$db": "shop"})),
          (1, op_msg(0, {"ok": 0, "errmsg": "ns not found", "code": 26}, to=2)),
          (0, op_msg(3, {"saslStart": 1, "payload": b"pw", "$db": "admin"})),
          (0, op_msg(4, {"insert": "o", "$db": "shop"}, flags=2)),
          (0, op_compressed(5, b"zz", 2))]


def test_default_is_the_shape_and_a_digest():
    sink = _events(CHUNKS)
    by = {e["command"]: e for e in sink.of("db.session.query")}
    find, sasl, insert, compressed = (by[c] for c in ("find", "saslStart", "insert",
                                                      "<compressed>"))
    assert (find["command"], find["database"], find["collection"]) == ("find", "shop", "orders")
    assert json.loads(find["query"]) == {"find": "<string>", "filter": {
        "qty": {"$gt": "<int>"}, "who": "<string>"}, "$db": "<string>"}
    assert find["rows"] == 2 and find["status"] == "ok" and find["query_redacted"]
    assert find["document_digest"].startswith("hmac-sha256:") and not find["truncated"]
    assert sasl["secret"] and sasl["query"] == "" and sasl["status"] == "unfinished"
    assert insert["status"] == "untracked"
    assert compressed["command"] == "<compressed>" and compressed["compressor"] == "zlib"
    [failed] = sink.of("db.session.query.failed")
    assert (failed["command"], failed["error_code"], failed["error"]) == ("drop", 26,
                                                                          "ns not found")
    assert "zed" not in str(sink.events)


def test_plain_and_omit():
    [find, *_] = _events(CHUNKS, "plain").of("db.session.query")
    assert json.loads(find["query"]) == FIND and "document_digest" not in find
    [find, *_] = _events(CHUNKS, "omit").of("db.session.query")
    assert "zed" not in find["query"] and "document_digest" not in find


def test_a_cut_document_renders_what_was_recorded():
    doc = bson.encode({"a": 1, "b": {"c": "x" * 100, "d": [1, 2, 3]}})
    for n in range(len(doc) + 1):
        text, whole = render(doc[:n], shape=False)
        json.loads(text)
        assert whole == (n == len(doc))
    assert render(doc, shape=False)[0] == '{"a":1,"b":{"c":"' + "x" * 100 + '","d":[1,2,3]}}'


def test_a_malformed_length_is_audited():
    sink = _events([(0, b"\x08\0\0\0" + b"\0" * 12)])
    [bad] = sink.of("db.session.malformed_packet")
    assert bad["reason"] == "bad message length" and bad["offset"] == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_render_never_fails_and_is_bounded(data, shape):
    text, _ = render(data, shape)
    json.loads(text.rstrip("…"))
    assert len(text) <= mgoaudit_py.DOC_CAP + 1


def test_random_sessions_give_events():
    for seed in range(30):
        rng = random.Random(seed)
        chunks = [(s, kit.mutate(rng, d) if rng.random() < 0.1 else d) for s, d in session(rng)]
        _events(chunks, rng.choice(["hash", "plain", "omit"]))
