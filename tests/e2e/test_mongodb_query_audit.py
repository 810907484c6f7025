"""Query audit (issue 14) for MongoDB through the cluster proxy: every command pymongo
sends, in both local-proxy modes, is a `db.session.query` (or `.failed`) event with its
database, collection, the document's shape (hashed by default, plain JSON only when the
role says `query_audit_parameters: plain`) and the reply's summary; `query_audit: false`
records nothing; a message of impossible length is `db.session.malformed_packet` and ends
the session. The database is mockupdb (tests/_testbase/mongomock.py)."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import uuid

import pytest

from mwiproxy.devkit.guide import GUIDE_ROLE
from mwiproxy.devkit.topology import wait_for
from tests.e2e.test_mongodb import MONGO, mongo  # noqa: F401 (its fixture)

pymongo = pytest.importorskip("pymongo")
bson = pytest.importorskip("bson")

pytestmark = pytest.mark.integration


def _role(name: str, options: str) -> str:
    return GUIDE_ROLE.replace("example-role", name) + f"  options:\n{options}"


def _queries(mongo, bot: str, kind: str = "db.session.query") -> list[dict]:  # noqa: F811
    return [e for e in mongo.topo.audit(kind) if e.get("protocol") == "mongodb"
            and e.get("user") == f"bot-{bot}"]


def _out(mongo, bot: str, role: str, options: str):  # noqa: F811
    path = mongo.topo.root / f"{role}.yaml"
    if not path.exists():
        path.write_text(_role(role, options))
        mongo.topo.cluster.ctl("create", "-f", str(path))
    return mongo.topo.bot_output(bot, service=MONGO, fmt="mongo", roles=role)


@pytest.mark.parametrize("tunnel", [True, False], ids=["tunnel", "plain"])
def test_commands_are_recorded_redacted(mongo, tunnel):  # noqa: F811
    bot = f"mga-{'t' if tunnel else 'p'}"
    out = mongo.output(bot)
    lp = mongo.topo.local_proxy(out, tunnel=tunnel, service=MONGO)
    secret = "v-" + uuid.uuid4().hex
    with mongo.client(lp.port, None if tunnel else out) as client:
        assert client["example-db"].things.find_one({"name": secret}) == {"_id": 1, "x": "hello"}
        assert client["example-db"].command("ping")["ok"] == 1.0
    assert wait_for(lambda: {"find", "ping"} <= {e["command"] for e in _queries(mongo, bot)})
    events = _queries(mongo, bot)
    find = next(e for e in events if e["command"] == "find")
    assert (find["database"], find["collection"], find["opcode"]) == ("example-db", "things",
                                                                      "OP_MSG")
    assert find["status"] == "ok" and find["rows"] == 1 and find["query_redacted"] is True
    assert json.loads(find["query"])["filter"] == {"name": "<string>"}
    assert str(find["document_digest"]).startswith("hmac-sha256:")
    assert secret not in json.dumps(events)
    assert len({e["session"] for e in events}) >= 1
    assert all(e["db_user"] == "alice" for e in events)


def test_plain_documents_and_failures(mongo):  # noqa: F811
    mongo.db.autoresponds("failme", ok=0, errmsg="no such thing", code=59)
    bot = "mga-plain-docs"
    out = _out(mongo, bot, "mga-plain-role", "    query_audit_parameters: plain\n")
    lp = mongo.topo.local_proxy(out, tunnel=True, service=MONGO)
    with mongo.client(lp.port) as client:
        client["example-db"].things.find_one({"name": "visible"})
        with pytest.raises(pymongo.errors.OperationFailure):
            client["example-db"].command("failme")
    assert wait_for(lambda: _queries(mongo, bot, "db.session.query.failed"))
    failed = _queries(mongo, bot, "db.session.query.failed")[0]
    assert (failed["command"], failed["error_code"], failed["error"]) == ("failme", 59,
                                                                          "no such thing")
    find = next(e for e in _queries(mongo, bot) if e["command"] == "find")
    assert json.loads(find["query"])["filter"] == {"name": "visible"}
    assert find["query_redacted"] is False and "document_digest" not in find


def test_query_audit_off_records_nothing(mongo):  # noqa: F811
    bot = "mga-off"
    out = _out(mongo, bot, "mga-off-role", "    query_audit: false\n")
    lp = mongo.topo.local_proxy(out, tunnel=True, service=MONGO)
    with mongo.client(lp.port) as client:
        assert client["example-db"].things.find_one() == {"_id": 1, "x": "hello"}
    assert wait_for(lambda: [e for e in mongo.topo.audit("db.session.end")
                             if e.get("user") == f"bot-{bot}"])
    assert _queries(mongo, bot) == []


def test_a_malformed_message_is_audited_and_ends_the_session(mongo):  # noqa: F811
    bot = "mga-bad"
    lp = mongo.topo.local_proxy(mongo.output(bot), tunnel=True, service=MONGO)
    body = struct.pack("<I", 0) + b"\0" + bson.encode({"ping": 1, "$db": "example-db"})
    with socket.create_connection(("127.0.0.1", lp.port), timeout=10) as s:
        s.sendall(struct.pack("<iiii", 16 + len(body), 5, 0, 2013) + body)
        s.recv(65536)
        s.sendall(struct.pack("<iiii", 8, 6, 0, 2013))
        rest = b""
        try:
            while chunk := s.recv(65536):
                rest += chunk
        except (ConnectionResetError, ssl.SSLError, TimeoutError):
            pass
    assert wait_for(lambda: _queries(mongo, bot, "db.session.malformed_packet"))
    bad = _queries(mongo, bot, "db.session.malformed_packet")[0]
    assert bad["reason"] == "bad message length" and bad["side"] == "client"
    assert wait_for(lambda: [e for e in mongo.topo.audit("db.session.end")
                             if e.get("user") == f"bot-{bot}"])
    assert any(e["command"] == "ping" for e in _queries(mongo, bot))

