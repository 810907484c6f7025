"""Hostile inputs against a real `mwiproxy start`: a role whose label regex backtracks
catastrophically, YAML bombs sent with `mwictl create -f`, and a slow request that must not
hold up anyone else's (the auth API runs its handlers off the event loop)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from mwiproxy.auth.client import AuthClient
from mwiproxy.config.loader import MAX_YAML_BYTES, MAX_YAML_DEPTH
from mwiproxy.identity.authorities import generate_private_key, private_key_pem, public_key_pem
from mwiproxy.identity.identityfile import read_identity_file
from mwiproxy.identity.tlsctx import client_context
from mwiproxy.wire import alpn
from mwiproxy.wire.frames import encode, recv_frame
from tests._testbase.cluster import ClusterProcess
from tests.unit.test_yaml_budgets import BOMB_ROLE, deep_flow

pytestmark = pytest.mark.integration

REDOS_VALUE = "a" * 30 + "!"  # 2**30 backtracking steps for `re` against ^(a+)+$

CLUSTER_YAML = f"""\
version: v1
cluster_name: mwiproxy.local
data_dir: {{data_dir}}
proxy:
  listen_addr: 127.0.0.1:{{port}}
databases:
  - name: redos-db
    protocol: postgres
    uri: 127.0.0.1:1
    static_labels: {{{{team: "{REDOS_VALUE}"}}}}
  - name: plain-db
    protocol: postgres
    uri: 127.0.0.1:1
    static_labels: {{{{team: aaa}}}}
"""

REDOS_ROLE = """\
kind: role
version: v7
metadata:
  name: redos
spec:
  allow:
    db_labels: {team: '^(a+)+$'}
    db_names: ['*']
    db_users: [alice]
  deny:
    db_labels: {team: '^(a|aa)+b$'}
"""


@pytest.fixture
def labelled_cluster(tmp_path):
    c = ClusterProcess(tmp_path / "data", config=CLUSTER_YAML).start()
    yield c
    c.stop()


def _bot_socket(cluster: ClusterProcess, tmp_path: Path, role_yaml: str, role: str
                ) -> ssl.SSLSocket:
    path = tmp_path / "role.yaml"
    path.write_text(role_yaml)
    cluster.ctl("create", "-f", str(path))
    out = cluster.ctl("bots", "add", "hostile", "--roles", role).stdout
    token = next(ln.split()[-1] for ln in out.splitlines() if "The bot token:" in ln)
    host_ca = b"".join(_admin(cluster).ca_pems)
    key = generate_private_key()
    with AuthClient(cluster.addr, ca_pems=host_ca) as c:
        cert = c.call("join", token=token,
                      public_key=public_key_pem(key.public_key()).decode())["cert"]
    ctx = client_context(host_ca, cert.encode(), private_key_pem(key), alpn=[alpn.AUTH])
    raw = socket.create_connection(("127.0.0.1", cluster.port), timeout=30)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def _admin(cluster: ClusterProcess):  # type: ignore[no-untyped-def]
    return read_identity_file(str(cluster.data_dir / "admin" / "identity"))


def _call(sock: ssl.SSLSocket, method: str, **params: object) -> dict:
    sock.sendall(encode({"id": 1, "method": method, "params": params}))
    return recv_frame(sock)


def _no_traceback(cluster: ClusterProcess) -> None:
    assert "Traceback" not in cluster.log.read_text()


def test_a_redos_role_is_judged_promptly_and_others_are_served_meanwhile(
        labelled_cluster, tmp_path):
    cluster = labelled_cluster
    sock = _bot_socket(cluster, tmp_path, REDOS_ROLE, "redos")
    results: list[list[str]] = []

    def list_databases() -> None:
        for _ in range(20):
            results.append([d["name"] for d in _call(sock, "db_ls")["result"]])

    worker = threading.Thread(target=list_databases)
    worker.start()
    with AuthClient(cluster.addr, ca_pems=None, timeout=30) as other:
        while worker.is_alive():
            assert other.call("ping")
    worker.join()
    sock.close()
    # the 30 a's and a '!' do not match ^(a+)+$; "aaa" does — decided, not timed out
    assert results == [["plain-db"]] * 20
    _no_traceback(cluster)


def test_yaml_bombs_sent_with_mwictl_are_refused_and_the_cluster_carries_on(cluster, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(REDOS_ROLE)
    cluster.ctl("create", "-f", str(good))
    cases = {
        "bomb.yaml": (BOMB_ROLE, "YAML aliases expand to more than"),
        "deep.yaml": (deep_flow(5000), f"YAML nested deeper than {MAX_YAML_DEPTH} levels"),
        "huge.yaml": ("# " + "x" * MAX_YAML_BYTES + "\n",
                      f"more than the limit of {MAX_YAML_BYTES}"),
    }
    for name, (text, why) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        res = cluster.ctl("create", "-f", str(path), check=False)
        assert res.returncode != 0, name
        assert why in res.stderr, res.stderr
        assert str(path) in res.stderr  # the file, and for the parsed ones the line
        assert "Traceback" not in res.stderr + res.stdout
    assert f"{tmp_path / 'bomb.yaml'}:" in cluster.ctl("create", "-f", str(tmp_path / "bomb.yaml"),
                                                        check=False).stderr
    listed = cluster.ctl("get", "roles").stdout
    assert "name: redos" in listed and "bomb" not in listed
    assert cluster.ctl("status").returncode == 0
    _no_traceback(cluster)


def test_a_slow_request_does_not_hold_up_other_connections(cluster, tmp_path):
    """A role file near the size limit takes the parser a while (seconds of pure Python);
    meanwhile another connection's requests are answered."""
    names = ", ".join(f"login{i}" for i in range(40_000))
    text = ("kind: role\nversion: v7\nmetadata:\n  name: slow\nspec:\n  allow:\n"
            f"    logins: [{names}]\n    db_lables: {{}}\n")  # refused at the very end
    assert len(text) < MAX_YAML_BYTES
    admin = _admin(cluster)
    answered_meanwhile = 0
    outcome: dict[str, object] = {}

    def create() -> None:
        with AuthClient.from_identity(cluster.addr, admin, timeout=120) as c:
            outcome["sent"] = time.monotonic()
            try:
                c.call("create_roles", yaml=text, filename="slow.yaml")
            except Exception as e:  # noqa: BLE001 - the refusal is what we expect
                outcome["error"] = str(e)
            outcome["done"] = time.monotonic()

    worker = threading.Thread(target=create)
    with AuthClient(cluster.addr, ca_pems=None, timeout=120) as other:
        other.call("ping")  # connected before the slow request starts
        worker.start()
        while worker.is_alive():
            other.call("ping")
            answered = time.monotonic()
            if "sent" in outcome and answered > float(outcome["sent"]) + 0.3 \
                    and "done" not in outcome:
                answered_meanwhile += 1
            time.sleep(0.02)
    worker.join()
    assert 'slow.yaml:8: spec.allow.db_lables: unknown field' in str(outcome["error"])
    assert float(outcome["done"]) - float(outcome["sent"]) > 0.5, "parse too fast to judge"
    assert answered_meanwhile > 0
    _no_traceback(cluster)
