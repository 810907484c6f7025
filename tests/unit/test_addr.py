"""The one address parser (wire/addr.py) and each place that reads an address through it:
the same spellings are accepted everywhere, defaults apply only where a caller asks."""

from __future__ import annotations

from pathlib import Path

import pytest

from mwiproxy.auth.client import AuthClient, ClusterUnreachable
from mwiproxy.auth.errors import AccessDenied
from mwiproxy.bot.cluster import ClusterClient
from mwiproxy.config.bot import load_bot_config
from mwiproxy.config.loader import ConfigError
from mwiproxy.localproxy.server import LocalProxy
from mwiproxy.metrics.diag import DiagServer, HealthRegistry
from mwiproxy.wire.addr import (
    DEFAULT_AUTH_PORT,
    HTTPS,
    LOOPBACK,
    TCP,
    Address,
    join_host_port,
    parse_address,
    parse_listen,
    split_address_list,
    split_host_port,
)
from mwiproxy.wire.failover import FailoverOrder


@pytest.mark.parametrize(("text", "want"), [
    ("db.example.com:5432", ("db.example.com", 5432)),
    ("10.0.0.1:0", ("10.0.0.1", 0)),
    ("[::1]:3080", ("::1", 3080)),
    ("[2001:db8::7]:443", ("2001:db8::7", 443)),
    ("under_score:1", ("under_score", 1)),
])
def test_host_port_spellings(text: str, want: tuple[str, int]) -> None:
    assert split_host_port(text) == want
    assert split_host_port(join_host_port(*want)) == want


@pytest.mark.parametrize(("text", "message"), [
    ("db.example.com", "is not host:port"),
    (":5432", "is not host:port"),
    ("[::1]", "is not host:port"),
    ("[::1]x:5", "is not host:port"),
    ("::1:3080", "write IPv6 addresses in brackets"),
    ("[10.0.0.1]:80", "is not an IPv6 address"),
    ("bad host:80", "is not a valid host name or address"),
    ("-dash:80", "is not a valid host name or address"),
    ("h:", "port must be a number from 0 to 65535"),
    ("h:65536", "port must be a number from 0 to 65535"),
    ("h:-1", "port must be a number from 0 to 65535"),
])
def test_strict_refusals_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_host_port(text)


def test_min_port_refuses_port_zero() -> None:
    with pytest.raises(ValueError, match="from 1 to 65535"):
        split_host_port("h:0", min_port=1)


def test_defaults_only_when_asked() -> None:
    assert split_host_port("h", default_port=7) == ("h", 7)
    assert split_host_port("[::1]", default_port=7) == ("::1", 7)
    assert split_host_port(":9", default_host="lo") == ("lo", 9)
    with pytest.raises(ValueError, match="is not host:port"):
        split_host_port(":9", default_port=7)  # a default port is not a default host


@pytest.mark.parametrize(("text", "want"), [
    ("tcp://0.0.0.0:5432", Address("tcp", "0.0.0.0", 5432)),
    ("localhost:5432", Address("tcp", "localhost", 5432)),
    (":5432", Address("tcp", LOOPBACK, 5432)),
    ("[::1]:5432", Address("tcp", "::1", 5432)),
    ("unix:///run/pg.sock", Address("unix", path="/run/pg.sock")),
])
def test_listen_addresses_round_trip(text: str, want: Address) -> None:
    assert parse_listen(text) == want
    assert parse_listen(str(want)) == want


@pytest.mark.parametrize(("text", "message"), [
    ("unix://relative.sock", "needs an absolute path"),
    ("http://h:1", "scheme must be tcp:// or unix://"),
    ("https://h:1", "scheme must be tcp:// or unix://"),
    ("tcp://h", "is not host:port"),
])
def test_listen_refusals(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_listen(text)


def test_unix_only_where_a_caller_accepts_it() -> None:
    with pytest.raises(ValueError, match="scheme must be tcp://"):
        parse_address("unix:///run/x.sock")
    assert parse_address("https://p.example.com:443", schemes=(TCP, HTTPS)) == Address(
        "tcp", "p.example.com", 443)


def test_auth_client_fills_the_cluster_defaults() -> None:
    """What a user may type for --auth-server: host alone, :port, https://host."""
    for text, want in [("proxy.example.com", ("proxy.example.com", DEFAULT_AUTH_PORT)),
                       (":4000", (LOOPBACK, 4000)),
                       ("https://[::1]", ("::1", DEFAULT_AUTH_PORT)),
                       ("tcp://10.1.1.1:3025", ("10.1.1.1", 3025))]:
        client = AuthClient(text, ca_pems=None)
        assert (client.host, client.port) == want
    with pytest.raises(ValueError, match="port must be a number"):
        AuthClient("proxy:http", ca_pems=None)


def test_local_proxy_reads_both_addresses_through_the_parser() -> None:
    def no_creds() -> tuple[bytes, bytes, bytes]:
        raise AssertionError("not read while constructing")

    proxy = LocalProxy(listen=":0", proxy_addr="https://[::1]:3080", service="s",
                       credentials=no_creds)
    assert proxy.listen == Address("tcp", LOOPBACK, 0)
    assert (proxy.proxy_host, proxy.proxy_port) == ("::1", 3080)
    with pytest.raises(ValueError, match="invalid proxy address: .* is not host:port"):
        LocalProxy(listen=":0", proxy_addr="proxy.example.com", service="s",
                   credentials=no_creds)


def test_diagnostics_address_is_strict() -> None:
    server = DiagServer("[::1]:0", HealthRegistry())
    assert (server.host, server.port) == ("::1", 0)
    with pytest.raises(ValueError, match="invalid diagnostics address: .* is not host:port"):
        DiagServer("3001", HealthRegistry())


def test_config_errors_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "tbot.yaml"
    path.write_text("version: v2\nproxy_server: p:443\ndiag_addr: '::1:3001'\n")
    with pytest.raises(ConfigError) as err:
        load_bot_config(str(path))
    assert str(err.value).startswith(f"{path}:")
    assert (err.value.key, err.value.line) == ("diag_addr", 3)
    assert "write IPv6 addresses in brackets" in str(err.value)


def test_an_address_list_splits_on_commas_and_refuses_empties_and_repeats() -> None:
    assert split_address_list("a:3080") == ["a:3080"]
    assert split_address_list(" a:3080 , [::1]:3080") == ["a:3080", "[::1]:3080"]
    for bad, why in (("", "empty address"), ("a:1,", "empty address"),
                     ("a:1, a:1", "appears twice")):
        with pytest.raises(ValueError, match=why):
            split_address_list(bad)


def test_failover_order_puts_the_last_address_that_worked_first() -> None:
    order = FailoverOrder(["a", "b", "c"])
    assert order.order() == ["a", "b", "c"]
    order.failed("a")  # the preferred one failed: the next caller starts at b
    assert order.order() == ["b", "a", "c"]
    order.failed("a")  # a stale report about a non-preferred address changes nothing
    assert order.preferred == "b"
    order.worked("c")
    assert order.order() == ["c", "a", "b"]
    order.failed("c")
    assert order.preferred == "a"  # wraps around
    single = FailoverOrder(["only"])
    single.failed("only")
    assert single.order() == ["only"]
    with pytest.raises(ValueError):
        FailoverOrder([])


def test_a_spreading_order_takes_healthy_addresses_in_turn_and_failed_ones_last() -> None:
    now = [100.0]
    order = FailoverOrder(["a", "b", "c"], spread=True, retry_after=5, clock=lambda: now[0])
    assert [order.order()[0] for _ in range(4)] == ["a", "b", "c", "a"]
    order.failed("b")  # b is passed over for 5 s, but still tried after the others
    firsts = []
    for _ in range(3):
        got = order.order()
        assert got[-1] == "b" and sorted(got) == ["a", "b", "c"], got
        firsts.append(got[0])
    assert "b" not in firsts and set(firsts) == {"a", "c"}
    now[0] += 5  # its time is up: b takes its turn again
    assert {order.order()[0] for _ in range(3)} == {"a", "b", "c"}
    order.failed("c")
    order.worked("c")  # one success makes it healthy at once
    assert {order.order()[0] for _ in range(3)} == {"a", "b", "c"}
    for name in ("a", "b", "c"):
        order.failed(name)  # all down: every address is still tried, none dropped
    assert sorted(order.order()) == ["a", "b", "c"]


def test_the_local_proxy_spreads_new_connections_only_when_asked() -> None:
    def lp(**kw: bool) -> LocalProxy:
        return LocalProxy(listen="127.0.0.1:0", proxy_addr="a:3080,b:3080", service="s",
                          credentials=lambda: None, **kw)  # type: ignore[arg-type, return-value]
    assert not lp()._failover.spread
    assert lp(spread=True)._failover.spread
    assert not ClusterClient("a:3080,b:3080").failover.spread


def test_the_bot_client_fails_over_on_unreachable_only() -> None:
    client = ClusterClient("a:3080,b:3080")
    tried: list[str] = []

    def a_is_down(address: str) -> str:
        tried.append(address)
        if address == "a:3080":
            raise ClusterUnreachable("cannot reach the cluster at a:3080: refused")
        return f"answer from {address}"

    assert client._each(a_is_down) == "answer from b:3080"
    assert client._each(a_is_down) == "answer from b:3080"
    assert tried == ["a:3080", "b:3080", "b:3080"]  # the live one stays first

    def refused(address: str) -> str:
        tried.append(address)
        raise AccessDenied("locked")
    tried.clear()
    with pytest.raises(AccessDenied):  # a refusal is an answer: not asked again elsewhere
        client._each(refused)
    assert tried == ["b:3080"]

    def all_down(address: str) -> str:
        raise ClusterUnreachable(f"cannot reach {address}")
    with pytest.raises(ClusterUnreachable, match="no cluster address answered: "
                       "b:3080: cannot reach b:3080; a:3080: cannot reach a:3080"):
        client._each(all_down)
