"""The web UI in a real browser: headless Chromium (Debian's chromium and
chromium-driver) driven by Selenium.

The guide's step 1 done in the browser — the invite (password and TOTP), log in, Access
→ Roles → Create New Role with the guide's YAML (a typo first: the error at its line),
bot `example` added (its token and join command shown once) and given the role — then
the bot joins with that token, gets database credentials, and psql connects through the
local proxy. A live session is locked from the Sessions page and cut; a user whose roles
lack the `role` write verbs cannot edit roles; cookie flags and a forged CSRF token are
checked in the browser. Every page is saved as a screenshot under $MWIPROXY_ARTIFACTS
(else the pytest basetemp)/web-screenshots.

Skipped only when Chromium is absent outside CI; in CI (`CI` set) a missing browser
fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mwiproxy.auth import totp
from mwiproxy.auth.client import AuthClient
from mwiproxy.devkit import postgres
from mwiproxy.devkit.guide import GUIDE_ROLE
from mwiproxy.devkit.topology import SERVICE, Topology, start_topology, wait_for
from mwiproxy.identity.authorities import generate_private_key, private_key_pem, public_key_pem
from tests._testbase.webclient import PASSWORD, invite_url

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT = 20.0

try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("selenium not installed (scripts/install-deps)", allow_module_level=True)
ADMIN_ROLE = """\
kind: role
version: v7
metadata: {name: web-admin-role}
spec:
  allow:
    db_labels: {'*': '*'}  # the databases page shows what the roles' labels match
    rules:
      - resources: ['*']
        verbs: ['*']
"""
READER_ROLE = """\
kind: role
version: v7
metadata: {name: web-reader-role}
spec:
  allow:
    rules:
      - resources: [role]
        verbs: [list, read]
"""


def _need_browser() -> None:
    if os.path.exists(CHROMEDRIVER) and os.path.exists(CHROMIUM):
        return
    if os.environ.get("CI"):
        pytest.fail("chromium / chromium-driver are missing: scripts/install-deps installs them")
    pytest.skip("chromium and chromium-driver not installed (scripts/install-deps)")


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = os.environ.get("MWIPROXY_ARTIFACTS")
    root = Path(base) if base else tmp_path_factory.getbasetemp()
    out = root / "web-screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    """A topology of its own: the guide's role is removed so the browser creates it."""
    _need_browser()
    if not postgres.available():
        pytest.skip("PostgreSQL 15 not installed")
    with start_topology(tmp_path_factory.mktemp("web-e2e")) as topology:
        topology.cluster.ctl("rm", "role/example-role")
        for text in (ADMIN_ROLE, READER_ROLE):
            path = topology.root / "web-role.yaml"
            path.write_text(text)
            topology.cluster.ctl("create", "-f", str(path))
        yield topology


class Browser:
    def __init__(self, base: str, shots: Path) -> None:
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        opts = Options()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--window-size=1200,800", "--disable-gpu",
                    "--disable-dev-shm-usage", "--no-first-run"):
            opts.add_argument(arg)
        if os.geteuid() == 0:
            opts.add_argument("--no-sandbox")
        opts.accept_insecure_certs = True  # the cluster's own host CA
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.driver.set_page_load_timeout(WAIT)
        self.base, self.shots = base, shots

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def find(self, css: str):  # type: ignore[no-untyped-def]
        return WebDriverWait(self.driver, WAIT).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, css)))

    def text(self, css: str) -> str:
        return str(self.find(css).text)

    def fill(self, **fields: str) -> None:
        for elem_id, value in fields.items():
            el = self.find(f"#{elem_id}")
            el.clear()
            el.send_keys(value)

    def click(self, css: str) -> None:
        old = self.driver.find_element(By.TAG_NAME, "html")
        self.find(css).click()
        WebDriverWait(self.driver, WAIT).until(ec.staleness_of(old))

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    @property
    def page(self) -> str:
        return str(self.driver.page_source)

    def close(self) -> None:
        self.driver.quit()


@pytest.fixture(scope="module")
def browser(topo: Topology, shots: Path) -> Iterator[Browser]:
    b = Browser(f"https://{topo.cluster.addr}", shots)
    yield b
    b.close()


def _activate_and_login(b: Browser, url: str, user: str, tag: str) -> None:
    b.driver.get(url)
    seed = b.text("#totp-secret")
    assert b.text("#totp-uri").startswith("otpauth://totp/")
    b.shot(f"{tag}-invite")
    step = int(time.time()) // totp.STEP
    b.fill(password=PASSWORD, password2=PASSWORD, code=totp.hotp(seed, step))
    b.click("#activate")
    assert "is ready" in b.text("#message")
    b.open("/web/login")
    b.fill(user=user, password=PASSWORD, code=totp.hotp(seed, step + 1))  # a code is good once
    b.shot(f"{tag}-login")
    b.click("#login")
    assert b.text("h1") == "Cluster status"


def _join_and_connect(topo: Topology, token: str) -> Path:
    """What the bot does with the token the page showed: join, database certificate,
    files written; then the local proxy (tunnel mode) for psql."""
    key = generate_private_key()
    with AuthClient(topo.cluster.addr, ca_pems=topo.host_ca) as anon:
        joined = anon.call("join", token=token,
                           public_key=public_key_pem(key.public_key()).decode())
    with AuthClient(topo.cluster.addr, ca_pems=topo.host_ca,
                    cert_pem=joined["cert"].encode(), key_pem=private_key_pem(key)) as c:
        db_key = generate_private_key()
        got = c.call("issue_database_cert", service=SERVICE, database="example-db",
                     username="alice", ttl="10m",
                     public_key=public_key_pem(db_key.public_key()).decode())
    return topo.write_output("example", private_key_pem(db_key), got["cert"].encode(),
                             got["cas"])


def test_guide_step_1_in_the_browser_then_psql_and_a_lock(topo, browser, shots):
    b = browser
    _activate_and_login(b, invite_url(topo.cluster, "ops", "web-admin-role"), "ops", "ops")
    assert b.text("#ca-pin") == topo.ca_pin
    b.shot("status")
    cookie = {c["name"]: c for c in b.driver.get_cookies()}["mwi_session"]
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # Access → Roles → Create New Role: a typo first, shown at its line
    b.open("/web/roles")
    b.click("#create-role")
    b.fill(yaml=GUIDE_ROLE.replace("db_users", "db_user"))
    b.click("#save-role")
    assert "role.yaml:10: spec.allow.db_user: unknown field" in b.text("#error")
    b.shot("role-yaml-error")
    b.fill(yaml=GUIDE_ROLE)
    b.click("#save-role")
    assert "example-role" in b.text("table")
    b.shot("roles")
    b.open("/web/roles/example-role")
    b.shot("role-edit")

    # the bot: added (token and join command shown once), then given the role
    b.open("/web/bots")
    b.fill(**{"bot-name": "example"})
    b.click("#add-bot")
    token = b.text("#token")
    command = b.text("#join-command")
    assert f"--token={token}" in command and f"--ca-pin={topo.ca_pin}" in command
    b.shot("bot-added")
    b.open("/web/bots")
    b.fill(**{"roles-example": "example-role"})
    b.click("#save-roles-example")
    assert b.find("#roles-example").get_attribute("value") == "example-role"
    b.shot("bots")

    # the bot's credentials and psql through the local proxy
    out = _join_and_connect(topo, token)
    lp = topo.local_proxy(out, tunnel=True)
    res = topo.psql(topo.dsn(lp), "SELECT current_user")
    assert res.returncode == 0 and res.stdout.strip() == "alice", res.stderr

    # a live session, locked from the UI and cut
    long = subprocess.Popen(["psql", topo.dsn(lp), "-Atc", "SELECT pg_sleep(120)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def listed() -> bool:
            b.open("/web/sessions")
            return "lock-" in b.page
        assert wait_for(listed, timeout=WAIT, step=0.5), b.page
        row = b.text("#sessions tbody tr")
        assert "bot-example" in row and "alice" in row and "tunnel" in row
        b.shot("sessions")
        b.click("button[id^='lock-']")
        _, err = long.communicate(timeout=WAIT)
        assert long.returncode != 0 and "locked" in err, err
    finally:
        if long.poll() is None:
            long.kill()
    assert wait_for(lambda: (b.open("/web/sessions"), "No active sessions" in b.page)[1],
                    timeout=WAIT, step=0.5)
    b.open("/web/locks")
    assert "bot:example" in b.text("table")
    b.shot("locks")
    assert topo.psql(topo.dsn(lp), "SELECT 1").returncode != 0  # still locked

    for page in ("tokens", "databases"):
        b.open(f"/web/{page}")
        b.shot(page)
    assert "env=dev" in b.page and "the cluster" in b.page
    b.open("/web/audit?type=lock.created")
    assert "by=ops" in b.text("#events")
    b.open("/web/audit?verify=1")
    assert "intact" in b.text("#chain")
    b.shot("audit")

    # a forged CSRF token: the browser's post is refused
    b.open("/web/locks")
    b.driver.execute_script(
        "document.querySelector('#create-lock').form.elements.csrf.value = 'forged'")
    b.fill(**{"lock-target": "nobody"})
    b.click("#create-lock")
    assert "CSRF" in b.page
    b.open("/web/locks")
    assert "nobody" not in b.page


def test_a_user_without_role_write_verbs_cannot_edit_roles(topo, browser):
    # the role the first test creates in the browser; made here when this test runs
    # alone (a rerun in a fresh process)
    if topo.cluster.ctl("get", "role/example-role", check=False).returncode != 0:
        path = topo.root / "guide-role.yaml"
        path.write_text(GUIDE_ROLE)
        topo.cluster.ctl("create", "-f", str(path))
    b = browser
    b.open("/web/")
    if "Log out" in b.page:
        b.click("header form button")
    _activate_and_login(b, invite_url(topo.cluster, "reader", "web-reader-role"), "reader",
                        "reader")
    b.open("/web/roles")
    assert "example-role" in b.page and "create-role" not in b.page
    b.open("/web/roles/example-role")
    assert b.find("#yaml").get_attribute("readonly") is not None
    assert not b.driver.find_elements(By.ID, "save-role")
    b.shot("reader-role-readonly")
    b.open("/web/roles/new")
    assert "may not create role" in b.page
    assert re.search(r"reader may not", b.page)
