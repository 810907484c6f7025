"""Redis end to end: a real Redis 7 (TLS only, `tls-auth-clients yes`, ACL users) served
by a real cluster process, reached through real local proxies by redis-cli and redis-py,
in tunnel mode (plaintext to the local proxy) and non-tunnel mode (`--tls` with the
files of a `format: tls` bot output).

Served: commands, pipelining, a 1 MiB value, RESP3 (`HELLO 3`), pub/sub, signed in as
the certificate's user. Refused: a db user no role allows, a locked bot (a live session
is cut), AUTH / HELLO … AUTH / inline AUTH naming another user, RESET; each audited,
the password never."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mwiproxy.devkit import postgres
from mwiproxy.devkit import redis as redis_kit
from mwiproxy.devkit.agent import Agent, agent_yaml, db_token
from mwiproxy.devkit.guide import GUIDE_ROLE
from mwiproxy.devkit.ports import free_port
from mwiproxy.devkit.topology import CLUSTER_YAML, LocalProxyProcess, Topology, start_topology
from mwiproxy.devkit.topology import wait_for as wait_until
from mwiproxy.wire import redis as resp

redis = pytest.importorskip("redis")

pytestmark = pytest.mark.integration

SERVICE = redis_kit.SERVICE
BOB_ROLE = GUIDE_ROLE.replace("example-role", "bob-role").replace("[alice]", "[bob]")
DEFAULT_ROLE = GUIDE_ROLE.replace("example-role", "default-role").replace(
    "[alice]", "[default]")
SECRET = "s3cr3t-pw-never-logged"
AGENT_REDIS = "agent-redis"


class RedisTopology(Topology):
    redis: redis_kit.RedisServer

    def out(self, bot: str, *, username: str = "alice", roles: str = "example-role",
            fmt: str = "", service: str = SERVICE) -> Path:
        return self.bot_output(bot, username=username, database="", service=service,
                               roles=roles, fmt=fmt)

    def proxy(self, out: Path, *, tunnel: bool, service: str = SERVICE) -> LocalProxyProcess:
        return self.local_proxy(out, tunnel=tunnel, service=service)


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisTopology]:
    if not postgres.available() or not redis_kit.available():
        pytest.skip("PostgreSQL 15 or Redis not installed")
    root = tmp_path_factory.mktemp("redis")
    server = redis_kit.RedisServer()
    template = (CLUSTER_YAML + redis_kit.DATABASE_YAML.replace("REDISPORT", str(server.port))
                + f"diag_addr: 127.0.0.1:{free_port()}\n")
    with start_topology(root, template, kind=RedisTopology) as topology:
        topology.redis = server
        try:
            redis_kit.start_redis(server, topology.cluster, root)
            for name, role in (("bob", BOB_ROLE), ("default", DEFAULT_ROLE)):
                (root / f"{name}-role.yaml").write_text(role)
                topology.cluster.ctl("create", "-f", str(root / f"{name}-role.yaml"))
            yield topology
        finally:
            server.stop()


@pytest.fixture(scope="module")
def tunnel(topo: RedisTopology) -> LocalProxyProcess:
    return topo.proxy(topo.out("rd-tunnel"), tunnel=True)


@pytest.fixture(scope="module")
def tls_out(topo: RedisTopology) -> Path:
    return topo.out("rd-tls", fmt="tls")


@pytest.fixture(scope="module")
def passthrough(topo: RedisTopology, tls_out: Path) -> LocalProxyProcess:
    return topo.proxy(tls_out, tunnel=False)


def _tls_args(out: Path) -> list[str]:
    return ["--tls", "--cacert", str(out / "tls.cas"), "--cert", str(out / "tls.crt"),
            "--key", str(out / "tls.key")]


def cli(lp: LocalProxyProcess, *args: str, tls: Path | None = None, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    cmd = ["redis-cli", "-h", "localhost", "-p", str(lp.port),
           *(_tls_args(tls) if tls else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, input=stdin, timeout=60)


def client(lp: LocalProxyProcess, tls: Path | None = None, **kw: object) -> redis.Redis:
    if tls is not None:
        kw.update(ssl=True, ssl_ca_certs=str(tls / "tls.cas"),
                  ssl_certfile=str(tls / "tls.crt"), ssl_keyfile=str(tls / "tls.key"))
    return redis.Redis(host="localhost", port=lp.port, socket_timeout=20,
                       socket_connect_timeout=10, **kw)


def events(topo: RedisTopology, kind: str, **match: object) -> list[dict[str, object]]:
    return [e for e in topo.audit(kind) if all(e.get(k) == v for k, v in match.items())]


def exercise(r: redis.Redis, prefix: str) -> None:
    """SET/GET, a pipeline, a 1 MiB value and pub/sub through one client."""
    assert r.execute_command("ACL", "WHOAMI") == b"alice"
    assert r.set(f"{prefix}:k", "v") and r.get(f"{prefix}:k") == b"v"
    pipe = r.pipeline(transaction=False)
    for i in range(200):
        pipe.set(f"{prefix}:p{i}", i)
    for i in range(200):
        pipe.get(f"{prefix}:p{i}")
    got = pipe.execute()
    assert got[:200] == [True] * 200 and got[200:] == [str(i).encode() for i in range(200)]
    big = bytes(range(256)) * 4096  # 1 MiB
    assert r.set(f"{prefix}:big", big) and r.get(f"{prefix}:big") == big
    sub = r.pubsub()
    sub.subscribe(f"{prefix}:ch")
    assert sub.get_message(timeout=10)["type"] == "subscribe"
    for i in range(3):
        assert r.publish(f"{prefix}:ch", f"m{i}") == 1
    seen = [sub.get_message(timeout=10) for _ in range(3)]
    assert [m["data"] for m in seen if m] == [b"m0", b"m1", b"m2"]
    sub.close()


def resp3(r: redis.Redis) -> None:
    """HELLO 3 passes untouched: RESP3 maps come back."""
    hello = r.execute_command("HELLO", "3")
    assert hello[b"proto"] == 3, hello
    assert r.execute_command("ACL", "WHOAMI") == b"alice"


def test_tunnel_mode_with_redis_py(topo, tunnel):
    r = client(tunnel)
    exercise(r, "t-py")
    r.close()
    resp3(client(tunnel, protocol=3))


def test_tunnel_mode_with_redis_cli(topo, tunnel):
    assert cli(tunnel, "SET", "t-cli", "hello").stdout.strip() == "OK"
    assert cli(tunnel, "GET", "t-cli").stdout.strip() == "hello"
    assert cli(tunnel, "ACL", "WHOAMI").stdout.strip() == "alice"
    # the client's own AUTH as the session's user is allowed (redis-cli --user sends it)
    res = cli(tunnel, "--user", "alice", "--pass", SECRET, "--no-auth-warning", "ACL", "WHOAMI")
    assert res.stdout.strip() == "alice", res
    piped = cli(tunnel, stdin="".join(f"SET t-cli:{i} {i}\n" for i in range(50)) +
                "GET t-cli:49\n")
    assert piped.stdout.split()[-1] == "49", piped
    shown = events(topo, "db.session.redis.command", command="AUTH alice ****")
    assert shown and all(e["allowed"] for e in shown), shown


def test_non_tunnel_mode_with_redis_cli(topo, passthrough, tls_out):
    assert cli(passthrough, "SET", "nt-cli", "hi", tls=tls_out).stdout.strip() == "OK"
    assert cli(passthrough, "GET", "nt-cli", tls=tls_out).stdout.strip() == "hi"
    assert cli(passthrough, "ACL", "WHOAMI", tls=tls_out).stdout.strip() == "alice"
    starts = events(topo, "db.session.start", user="bot-rd-tls", protocol="redis")
    assert starts and all(e["success"] for e in starts), starts


@pytest.mark.parametrize("tunnel_mode", [True, False])
def test_without_ping_framing(topo, tls_out, tunnel_mode):
    """`--no-ping`: plain `teleport-redis` (the other tests run framed, the default)."""
    lp = topo.local_proxy(tls_out, tunnel=tunnel_mode, service=SERVICE, extra=("--no-ping",))
    tls = None if tunnel_mode else tls_out
    assert cli(lp, "SET", f"np-{tunnel_mode}", "1", tls=tls).stdout.strip() == "OK"
    res = cli(lp, "AUTH", "bob", "x", tls=tls)
    assert 'AUTH as "bob" is not allowed' in res.stdout + res.stderr, res


def test_non_tunnel_mode_with_redis_py(topo, passthrough, tls_out):
    r = client(passthrough, tls=tls_out)
    exercise(r, "nt-py")
    r.close()
    resp3(client(passthrough, tls=tls_out, protocol=3))


def test_non_tunnel_without_a_client_certificate_is_refused(topo, passthrough, tls_out):
    res = cli(passthrough, "PING", tls=None)  # plaintext into the pass-through
    assert "no client certificate was presented" in res.stdout + res.stderr, res
    res = subprocess.run(["redis-cli", "-h", "localhost", "-p", str(passthrough.port),
                          "--tls", "--cacert", str(tls_out / "tls.cas"), "PING"],
                         capture_output=True, text=True, timeout=60)
    assert "no client certificate was presented" in res.stdout + res.stderr, res


def test_a_db_user_no_role_allows_is_refused(topo):
    out = topo.out("rd-demoted")
    topo.cluster.ctl("bots", "update", "rd-demoted", "--set-roles", "bob-role")
    lp = topo.proxy(out, tunnel=True)
    with pytest.raises(redis.exceptions.ResponseError) as err:
        client(lp).ping()
    assert 'access to db denied: no role allows db_user "alice"' in str(err.value)
    denied = events(topo, "db.access.denied", user="bot-rd-demoted", protocol="redis")
    assert denied and denied[-1]["db_user"] == "alice", denied


def _raw(lp: LocalProxyProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", lp.port), timeout=20)


def _read_to_eof(s: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def _refused_then_closed(lp: LocalProxyProcess, request: bytes) -> bytes:
    """PING, then `request`: the PONG, then the refusal, then the end of the session."""
    with _raw(lp) as s:
        s.sendall(resp.encode_command("PING"))
        assert s.recv(64) == b"+PONG\r\n"
        s.sendall(request + resp.encode_command("SET", "after-refusal", "1"))
        return _read_to_eof(s)


def test_auth_as_another_user_is_refused_and_audited_masked(topo, tunnel):
    data = _refused_then_closed(tunnel, resp.encode_command("AUTH", "bob", SECRET))
    assert data.startswith(b'-ERR AUTH as "bob" is not allowed: this session is signed in '
                           b'as database user "alice"'), data
    assert data.count(b"\r\n") == 1, data  # nothing after the refusal
    data = _refused_then_closed(tunnel, resp.encode_command("HELLO", "3", "AUTH", "bob",
                                                            SECRET))
    assert data.startswith(b'-ERR HELLO AUTH as "bob" is not allowed'), data
    data = _refused_then_closed(tunnel, f"AUTH bob {SECRET}\r\n".encode())  # inline
    assert data.startswith(b'-ERR AUTH as "bob" is not allowed'), data
    data = _refused_then_closed(tunnel, b'auth "b\\x6fb" x\n')  # quoted inline, as Redis
    assert data.startswith(b'-ERR AUTH as "bob" is not allowed'), data
    # the commands after a refused one never reached Redis
    assert topo.redis.admin("EXISTS", "after-refusal") == "0"
    refused = [e for e in events(topo, "db.session.redis.command", allowed=False,
                                 user="bot-rd-tunnel") if "AUTH" in str(e["command"])]
    assert {e["command"] for e in refused} == {"AUTH bob ****", "HELLO 3 AUTH bob ****"}
    assert len(refused) == 4  # multibulk, HELLO, inline, quoted inline
    assert all(e["db_user"] == "alice" and "bob" in str(e["reason"]) for e in refused)
    every = json.dumps(topo.audit("db.session.redis.command"))
    assert SECRET not in every and SECRET not in topo.cluster.log.read_text()


def test_reset_is_refused_unless_the_user_is_default(topo, tunnel):
    data = _refused_then_closed(tunnel, resp.encode_command("RESET"))
    assert data.startswith(b'-ERR RESET would sign this session in as "default"'), data
    lp = topo.proxy(topo.out("rd-default", username="", roles="default-role"), tunnel=True)
    r = client(lp)
    assert r.execute_command("ACL", "WHOAMI") == b"default"
    assert r.execute_command("RESET") in (b"RESET", "RESET")  # a simple string
    assert r.execute_command("AUTH", "default", "x") in (True, b"OK", "OK")  # itself
    r.close()
    assert events(topo, "db.session.redis.command", user="bot-rd-default", command="RESET",
                  allowed=True)


def test_a_locked_bot_s_live_session_is_cut(topo):
    lp = topo.proxy(topo.out("rd-locked"), tunnel=True)
    with _raw(lp) as s:
        s.sendall(resp.encode_command("PING"))
        assert s.recv(64) == b"+PONG\r\n"
        topo.cluster.ctl("lock", "--bot=rd-locked", "--message", "incident 13")
        data = _read_to_eof(s)
    assert data.startswith(b"-ERR session ended:") and b"incident 13" in data, data
    assert wait_until(lambda: events(topo, "db.session.end", user="bot-rd-locked",
                                     reason="locked"), timeout=20)
    with pytest.raises(redis.exceptions.ResponseError) as err:
        client(lp).ping()
    assert "locked" in str(err.value)


def test_sessions_are_audited_at_both_ends(topo, tunnel):
    r = client(tunnel)
    assert r.set("audited", "x")
    r.close()
    assert wait_until(lambda: events(topo, "db.session.end", user="bot-rd-tunnel",
                                     protocol="redis"), timeout=20)
    ends = events(topo, "db.session.end", user="bot-rd-tunnel", protocol="redis")
    assert any(e["bytes_client_to_db"] and e["bytes_db_to_client"] and e["native"]
               and e["db_service"] == SERVICE and e["db_user"] == "alice" for e in ends)
    starts = events(topo, "db.session.start", user="bot-rd-tunnel", protocol="redis")
    assert {e["session_id"] for e in ends} <= {e["session_id"] for e in starts}


def test_redis_served_by_a_database_agent(topo):
    """The same Redis registered by a database agent as `agent-redis`: the agent signs
    in (its certificate through the session's grant), the cluster proxy's relay still
    holds AUTH."""
    agent = Agent(topo, "redis", template=agent_yaml(
        (AGENT_REDIS, "redis", f"127.0.0.1:{topo.redis.port}")))
    agent.start(token=db_token(topo))
    try:
        listed = lambda: AGENT_REDIS in topo.cluster.ctl("db", "ls").stdout  # noqa: E731
        assert wait_until(listed, timeout=20), topo.cluster.ctl("db", "ls").stdout
        lp = topo.proxy(topo.out("rd-agent", service=AGENT_REDIS), tunnel=True,
                        service=AGENT_REDIS)
        r = client(lp)
        assert r.execute_command("ACL", "WHOAMI") == b"alice"
        big = b"a" * (1 << 20)
        assert r.set("via-agent", big) and r.get("via-agent") == big
        r.close()
        data = _refused_then_closed(lp, resp.encode_command("AUTH", "bob", SECRET))
        assert data.startswith(b'-ERR AUTH as "bob" is not allowed'), data
        assert wait_until(lambda: len(events(topo, "db.session.end", user="bot-rd-agent",
                                             db_service=AGENT_REDIS)) >= 2, timeout=20)
    finally:
        agent.stop()


def _metrics(topo: RedisTopology) -> str:
    addr = re.search(r"diag_addr: (\S+)", topo.cluster.config_path.read_text()).group(1)
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        return r.read().decode()


def test_redis_sessions_are_counted_in_the_metrics(topo, tunnel):
    client(tunnel).ping()
    _refused_then_closed(tunnel, resp.encode_command("RESET"))
    refused = re.compile(r'mwiproxy_db_connections_closed_total\{mode="tunnel",'
                         r'protocol="redis",reason="refused",service="example-redis"\} [1-9]')
    assert wait_until(lambda: refused.search(_metrics(topo)), timeout=20)
    text = _metrics(topo)
    ok = re.search(r'mwiproxy_db_connections_total\{mode="tunnel",protocol="redis",'
                   r'result="success",service="example-redis"\} (\S+)', text)
    assert ok and float(ok.group(1)) >= 1, text[:2000]
    assert re.search(r'mwiproxy_db_transmit_bytes_total\{[^}]*protocol="redis"[^}]*\} '
                     r'[1-9]', text), "no Redis bytes counted"
