"""The auth API over real TLS against `mwiproxy start`: an identity authorizes only while
its certificate is valid — a connection held open past notAfter gets nothing more, and a
TLS session cannot be resumed to skip the certificate check."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from mwiproxy.auth.client import AuthClient
from mwiproxy.auth.errors import AccessDenied
from mwiproxy.identity.authorities import generate_private_key, private_key_pem, public_key_pem
from mwiproxy.identity.identityfile import read_identity_file
from mwiproxy.identity.tlsctx import client_context
from mwiproxy.wire import alpn
from mwiproxy.wire.frames import encode, recv_frame
from tests._testbase.fixtures import GUIDE_ROLE as ROLE

pytestmark = pytest.mark.integration


def _short_lived_bot(cluster, tmp_path, ttl: str) -> tuple[bytes, bytes, bytes]:
    """(cert, key, host CA) of a bot that joined with a certificate living `ttl`."""
    role = tmp_path / "role.yaml"
    role.write_text(ROLE)
    cluster.ctl("create", "-f", str(role))
    out = cluster.ctl("bots", "add", "example", "--roles", "example-role").stdout
    token = next(ln.split()[-1] for ln in out.splitlines() if "The bot token:" in ln)
    admin = read_identity_file(str(cluster.data_dir / "admin" / "identity"))
    host_ca = b"".join(admin.ca_pems)
    key = generate_private_key()
    with AuthClient(cluster.addr, ca_pems=host_ca) as c:
        reply = c.call("join", token=token, public_key=public_key_pem(key.public_key()).decode(),
                       ttl=ttl)
    return reply["cert"].encode(), private_key_pem(key), host_ca


def _call(sock: ssl.SSLSocket, method: str, **params: object) -> dict:
    sock.sendall(encode({"id": 1, "method": method, "params": params}))
    return recv_frame(sock)


def _admin_audit(cluster) -> list[dict]:
    admin = read_identity_file(str(cluster.data_dir / "admin" / "identity"))
    with AuthClient.from_identity(cluster.addr, admin) as c:
        return c.call("audit", types=["auth.denied"])


def test_a_connection_held_open_past_expiry_gets_nothing(cluster, tmp_path):
    cert, key, host_ca = _short_lived_bot(cluster, tmp_path, "4s")
    ctx = client_context(host_ca, cert, key, alpn=[alpn.AUTH])
    raw = socket.create_connection(("127.0.0.1", cluster.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        assert "result" in _call(sock, "db_ls")  # valid now
        time.sleep(4.5)
        reply = _call(sock, "renew", public_key=public_key_pem(
            generate_private_key().public_key()).decode())
    assert reply["error"]["code"] == "access_denied"
    assert "expired at" in reply["error"]["message"]
    denied = _admin_audit(cluster)
    assert any(e["method"] == "renew" and "expired at" in e["reason"] for e in denied)


def test_the_auth_api_never_resumes_a_tls_session(cluster, tmp_path):
    cert, key, host_ca = _short_lived_bot(cluster, tmp_path, "1h")
    ctx = client_context(host_ca, cert, key, alpn=[alpn.AUTH])
    first = ctx.wrap_socket(socket.create_connection(("127.0.0.1", cluster.port), timeout=10),
                            server_hostname="localhost")
    assert "result" in _call(first, "db_ls")  # TLS 1.3 tickets arrive with the first reply
    session = first.session
    first.close()
    second = ctx.wrap_socket(socket.create_connection(("127.0.0.1", cluster.port), timeout=10),
                             server_hostname="localhost", session=session)
    with second:
        assert "result" in _call(second, "db_ls")
        assert not second.session_reused


def test_the_auth_api_takes_tls_1_3_only(cluster, tmp_path):
    """TLS 1.2 would resume by session id from OpenSSL's server cache (Python cannot turn
    it off), skipping the certificate check: the control plane does not offer it."""
    cert, key, host_ca = _short_lived_bot(cluster, tmp_path, "1h")
    ctx = client_context(host_ca, cert, key, alpn=[alpn.AUTH])
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    raw = socket.create_connection(("127.0.0.1", cluster.port), timeout=10)
    with pytest.raises(ssl.SSLError):  # refused (alert or close, depending on the loop)
        ctx.wrap_socket(raw, server_hostname="localhost")
    raw.close()


def test_an_expired_certificate_is_refused_at_the_handshake_too(cluster, tmp_path):
    cert, key, host_ca = _short_lived_bot(cluster, tmp_path, "2s")
    time.sleep(2.5)
    with AuthClient(cluster.addr, ca_pems=host_ca, cert_pem=cert, key_pem=key) as c:
        with pytest.raises(AccessDenied):
            c.call("db_ls")


def test_a_join_token_cannot_outlive_the_clusters_maximum(cluster):
    for args in (("bots", "add", "example", "--ttl", "100000h"),
                 ("tokens", "add", "--type=db", "--ttl", "25h")):
        res = cluster.ctl(*args, check=False)
        assert res.returncode != 0
        assert "longer than this cluster allows (24h, auth.max_token_ttl" in res.stderr
    assert "example" not in cluster.ctl("bots", "ls").stdout
    assert cluster.ctl("tokens", "add", "--type=db", "--ttl", "24h").returncode == 0
