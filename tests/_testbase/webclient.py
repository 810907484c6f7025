"""A small HTTPS client for the web UI tests: TLS to the cluster port (the host CA
verified), cookies kept, the CSRF token read from the last page, forms posted."""

from __future__ import annotations

import http.client
import re
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from http.cookies import SimpleCookie

from mwiproxy.auth import totp
from mwiproxy.devkit.cluster import ClusterProcess

PASSWORD = "correct horse battery staple"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: str
    alpn: str | None

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    @property
    def set_cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []


@dataclass
class WebClient:
    host: str
    port: int
    ca_pem: bytes
    alpn: list[str] | None = field(default_factory=lambda: ["h2", "http/1.1"])
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str = ""
    used_steps: set[int] = field(default_factory=set)  # TOTP steps this user spent

    @classmethod
    def of(cls, cluster: ClusterProcess, **kw: object) -> WebClient:
        host, port = cluster.addr.rsplit(":", 1)
        return cls(host, int(port), (cluster.data_dir / "ca" / "host.crt").read_bytes(),
                   **kw)  # type: ignore[arg-type]

    @property
    def origin(self) -> str:
        return f"https://{self.host}:{self.port}"

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
        if self.alpn:
            ctx.set_alpn_protocols(self.alpn)
        conn = http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=30)
        hdrs = dict(headers or {})
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
            hdrs.setdefault("Origin", self.origin)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            text = resp.read().decode()
            alpn = conn.sock.selected_alpn_protocol() if conn.sock else None
        finally:
            conn.close()
        for raw in resp.headers.get_all("Set-Cookie") or []:
            c = SimpleCookie(raw)
            for k, morsel in c.items():
                if morsel["max-age"] == "0" or morsel.value == "":
                    self.cookies.pop(k, None)
                else:
                    self.cookies[k] = morsel.value
        m = re.search(r'name="csrf" value="([^"]*)"', text)
        if m:
            self.csrf = m.group(1)
        return Reply(resp.status, resp.headers, text, alpn)

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, str], *, csrf: bool = True,
             headers: dict[str, str] | None = None) -> Reply:
        if csrf and "csrf" not in form:
            form = {**form, "csrf": self.csrf}
        return self.request("POST", path, form, headers)


def invite_url(cluster: ClusterProcess, name: str, roles: str) -> str:
    out = cluster.ctl("users", "add", name, f"--roles={roles}").stdout
    m = re.search(r"https://\S+", out)
    assert m, out
    return m.group(0)


def activate(client: WebClient, url: str, password: str = PASSWORD) -> str:
    """Follow the invite: set the password and TOTP; returns the TOTP secret."""
    path = urllib.parse.urlsplit(url).path
    page = client.get(path)
    m = re.search(r'id="totp-secret">([A-Z2-7]+)<', page.body)
    assert page.status == 200 and m, page.body
    seed = m.group(1)
    step = int(time.time()) // totp.STEP
    done = client.post(path, {"password": password, "password2": password,
                              "code": totp.hotp(seed, step)})
    assert done.status == 200 and "is ready" in done.body, done.body
    client.used_steps = {step}
    return seed


def fresh_code(seed: str, used: set[int]) -> str:
    """A TOTP code for a step after every used one: this step or the next (the server
    allows one step of drift), else wait for the next step."""
    while True:
        now = int(time.time()) // totp.STEP
        for step in (now, now + 1):
            if step > max(used, default=-1):
                used.add(step)
                return totp.hotp(seed, step)
        time.sleep(0.5)


def login(client: WebClient, user: str, seed: str, password: str = PASSWORD) -> Reply:
    client.get("/web/login")
    return client.post("/web/login", {"user": user, "password": password,
                                      "code": fresh_code(seed, client.used_steps)})
