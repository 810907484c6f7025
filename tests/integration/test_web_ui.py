"""The web UI over TLS to a real cluster process (ALPN http/1.1, and no ALPN): invite,
TOTP, login and its rate limit, cookie flags, security headers, CSRF and Origin checks,
denial by the `rules` of the user's roles, and audit by the user's name."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from mwiproxy.devkit.cluster import ClusterProcess
from mwiproxy.devkit.guide import GUIDE_ROLE
from mwiproxy.devkit.topology import wait_for
from tests._testbase.webclient import WebClient, activate, invite_url, login

WEB_ADMIN = """\
kind: role
version: v7
metadata: {name: web-admin}
spec:
  allow:
    rules:
      - resources: ['*']
        verbs: ['*']
"""
WEB_VIEWER = """\
kind: role
version: v7
metadata: {name: web-viewer}
spec:
  allow:
    rules:
      - resources: [role, bot]
        verbs: [list, read]
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    root = tmp_path_factory.mktemp("web")
    c = ClusterProcess(root / "data").start()
    for name, text in (("guide", GUIDE_ROLE), ("admin", WEB_ADMIN), ("viewer", WEB_VIEWER)):
        (root / f"{name}.yaml").write_text(text)
        c.ctl("create", "-f", str(root / f"{name}.yaml"))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def ann(cluster: ClusterProcess) -> tuple[WebClient, str]:
    """A logged-in user with every rule."""
    client = WebClient.of(cluster)
    seed = activate(client, invite_url(cluster, "ann", "web-admin"))
    assert login(client, "ann", seed).status == 303
    return client, seed


def _audit(cluster: ClusterProcess, kind: str) -> list[dict[str, object]]:
    out = cluster.ctl("audit", "--type", kind, "--format", "json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_served_for_alpn_http11_and_for_no_alpn(cluster):
    for alpn, selected in ((["h2", "http/1.1"], "http/1.1"), (None, None)):
        reply = WebClient.of(cluster, alpn=alpn).get("/web/login")
        assert reply.status == 200 and "Log in" in reply.body
        assert reply.alpn == selected
    assert WebClient.of(cluster).get("/web/").status == 303  # no session: to the login
    # a client offering only names the port does not serve is refused, as before
    with pytest.raises((OSError, http.client.HTTPException)):
        WebClient.of(cluster, alpn=["teleport-unknown"]).get("/web/login")
    # the auth API beside it is unchanged
    assert "mwiproxy.local" in cluster.ctl("status").stdout
    # TLS 1.2 is refused like on the auth API (no resumption possible on this context)
    ctx = ssl.create_default_context(cadata=(cluster.data_dir / "ca" / "host.crt").read_text())
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        host, port = cluster.addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            ctx.wrap_socket(raw, server_hostname=host)


def test_invite_login_cookie_flags_and_headers(cluster, ann):
    client, _ = ann
    page = client.get("/web/")
    assert page.status == 200 and 'id="ca-pin">sha256:' in page.body
    csp = page.header("Content-Security-Policy")
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert page.header("X-Frame-Options") == "DENY"
    assert page.header("Cache-Control") == "no-store"
    assert "<script" not in page.body and "style=" not in page.body
    # the session cookie as set at login
    fresh = WebClient.of(cluster)
    seed = activate(fresh, invite_url(cluster, "cookie-check", "web-viewer"))
    reply = login(fresh, "cookie-check", seed)
    assert reply.status == 303
    cookie = next(c for c in reply.set_cookies if c.startswith("mwi_session="))
    flags = {f.strip().split("=")[0].lower() for f in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite", "path", "max-age"} <= flags
    assert "samesite=strict" in cookie.lower()
    assert len(cookie.split(";")[0].split("=", 1)[1]) >= 43  # 256 bits, base64url
    assert any(e["user"] == "cookie-check" for e in _audit(cluster, "web.login"))


def test_invite_is_single_use_and_needs_the_code(cluster):
    url = invite_url(cluster, "once", "web-viewer")
    client = WebClient.of(cluster)
    path = "/" + url.split("/", 3)[3]
    client.get(path)
    bad = client.post(path, {"password": "p" * 14, "password2": "p" * 14, "code": "000000"})
    assert bad.status == 400 and "code does not match" in bad.body
    activate(client, url)
    assert WebClient.of(cluster).get(path).status == 404


def test_post_without_csrf_or_from_another_origin_is_refused(cluster, ann):
    client, _ = ann
    client.get("/web/roles")
    no_token = client.post("/web/locks", {"target_kind": "user", "target": "x"}, csrf=False)
    assert no_token.status == 403 and "CSRF" in no_token.body
    wrong = client.post("/web/locks", {"target_kind": "user", "target": "x", "csrf": "A" * 43})
    assert wrong.status == 403
    other = client.post("/web/locks", {"target_kind": "user", "target": "x"},
                        headers={"Origin": "https://evil.example"})
    assert other.status == 403 and "cross-origin" in other.body
    assert "No active locks" in client.get("/web/locks").body  # nothing was created
    # the login form has its own token (before any session)
    anon = WebClient.of(cluster)
    anon.get("/web/login")
    assert anon.post("/web/login", {"user": "ann", "password": "x", "code": "1"},
                     csrf=False).status == 403
    reasons = [e.get("reason") for e in _audit(cluster, "web.denied")]
    assert "missing or wrong CSRF token" in reasons and "cross-origin POST" in reasons


def test_login_rate_limited_and_audited(cluster):
    client = WebClient.of(cluster)
    seed = activate(client, invite_url(cluster, "limited", "web-viewer"))
    for _ in range(5):
        client.get("/web/login")
        r = client.post("/web/login", {"user": "limited", "password": "wrong" * 3,
                                       "code": "000000"})
        assert r.status == 401 and "wrong user name" in r.body
    r = login(client, "limited", seed)  # the right password and code, but too many tries
    assert r.status == 401 and "too many failed attempts" in r.body
    assert any(e["user"] == "limited" for e in _audit(cluster, "web.login.limited"))


def test_role_yaml_error_is_shown_at_its_line(cluster, ann):
    client, _ = ann
    client.get("/web/roles/new")
    bad = GUIDE_ROLE.replace("example-role", "typo-role").replace("db_users", "db_userz")
    r = client.post("/web/roles", {"name": "", "yaml": bad})
    assert r.status == 400
    assert "role.yaml:10: spec.allow.db_userz: unknown field" in r.body
    assert 'did you mean &#34;db_users&#34;' in r.body or "did you mean &quot;db_users" \
        in r.body  # escaped by the template
    good = client.post("/web/roles", {"name": "", "yaml": bad.replace("db_userz", "db_users")})
    assert good.status == 303
    assert "typo-role" in client.get("/web/roles").body
    created = [e for e in _audit(cluster, "role.created") if e["role"] == "typo-role"]
    assert created and created[0]["by"] == "ann"  # audited with the user's name


def test_rules_decide_what_a_user_may_do(cluster):
    client = WebClient.of(cluster)
    seed = activate(client, invite_url(cluster, "vera", "web-viewer"))
    assert login(client, "vera", seed).status == 303
    roles = client.get("/web/roles")
    assert roles.status == 200 and "example-role" in roles.body
    assert "Create New Role" not in roles.body and "Delete" not in roles.body
    assert client.get("/web/roles/new").status == 403
    edit = client.get("/web/roles/example-role")
    assert edit.status == 200 and "readonly" in edit.body and "save-role" not in edit.body
    r = client.post("/web/roles", {"name": "example-role", "yaml": GUIDE_ROLE})
    assert r.status == 403 and "may not update role" in r.body
    assert client.post("/web/roles/example-role/delete", {}).status == 403
    assert client.get("/web/locks").status == 403  # no lock rule at all
    assert client.get("/web/audit").status == 403
    nav = client.get("/web/").body
    assert "/web/bots" in nav and "/web/locks" not in nav
    denied = [e for e in _audit(cluster, "web.denied") if e.get("user") == "vera"]
    assert {(e["resource"], e["verb"]) for e in denied} >= {("role", "create"),
                                                           ("role", "update")}


def test_a_locked_user_is_refused_at_the_next_request(cluster):
    client = WebClient.of(cluster)
    seed = activate(client, invite_url(cluster, "lockme", "web-viewer"))
    assert login(client, "lockme", seed).status == 303
    assert client.get("/web/roles").status == 200
    cluster.ctl("lock", "--user", "lockme", "--message", "compromised")
    r = client.get("/web/roles")
    assert r.status == 403 and "compromised" in r.body
    cluster.ctl("users", "rm", "lockme")
    assert client.get("/web/roles").status == 303  # the user is gone: to the login page
    assert "lockme" not in cluster.ctl("users", "ls").stdout


def test_pages_render_for_a_full_user(cluster, ann):
    client, _ = ann
    for path, text in (("/web/bots", "Add a bot"), ("/web/tokens", "Add a join token"),
                       ("/web/databases", "Databases"), ("/web/sessions", "No active"),
                       ("/web/locks", "Create a lock"), ("/web/audit?verify=1", "intact")):
        r = client.get(path)
        assert r.status == 200 and text in r.body, (path, r.body[:2000])
    added = client.post("/web/bots", {"name": "webbot", "roles": "example-role"})
    assert added.status == 200
    command = re.search(r'<pre id="join-command">([^<]+)</pre>', added.body)
    assert command and "--ca-pin=sha256:" in command.group(1)
    assert "--token=" in command.group(1)
    assert "webbot" in client.get("/web/bots").body


def test_a_flood_of_refused_requests_cannot_fill_the_audit_log(tmp_path):
    """An unauthenticated client posting cross-origin forms is refused every time, but
    its web.denied events pass auth/audit_limit's buckets: a burst, then one a second,
    and the rest are summed in one `suppressed` event (its own cluster: the buckets are
    per address, and the module's tests share 127.0.0.1)."""
    from mwiproxy.auth.audit_limit import PER_REMOTE_BURST, PER_REMOTE_RATE

    c = ClusterProcess(tmp_path / "data").start()
    try:
        anon = WebClient.of(c)
        t0, flood = time.monotonic(), 10 * PER_REMOTE_BURST
        for _ in range(flood):
            refused = anon.post("/web/login", {"user": "x"}, csrf=False,
                                headers={"Origin": "https://evil.example"})
            assert refused.status == 403
        elapsed = time.monotonic() - t0
        one_by_one = [e for e in _audit(c, "web.denied") if "suppressed" not in e]
        assert PER_REMOTE_BURST <= len(one_by_one) <= PER_REMOTE_BURST + (
            elapsed + 1) * PER_REMOTE_RATE
        assert all(e["reason"] == "cross-origin POST" for e in one_by_one)

        def summarised() -> int:
            return sum(int(str(e["suppressed"])) for e in _audit(c, "web.denied")
                       if "suppressed" in e)
        assert wait_for(lambda: summarised() == flood - len(one_by_one), timeout=30,
                        step=0.5)
    finally:
        c.stop()
