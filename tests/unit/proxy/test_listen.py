"""The one accept layer (`relay/listen.py`) on the build under test (native Acceptor, or
its pure twin with MWIPROXY_NO_EXTENSIONS=1): the queueing cap pauses and resumes the
acceptor without resetting anyone, Unix sockets are private and replace only stale
files, a process out of file descriptors keeps its port, and the local proxy really
accepts through the Acceptor (on the worker thread in the native build)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

from mwiproxy import _native
from mwiproxy.identity.authorities import (
    cert_pem,
    create_authority,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.identity.certs import DatabaseRoute, Identity
from mwiproxy.localproxy.server import LocalProxy
from mwiproxy.relay.listen import Listener
from mwiproxy.relay.streams import SocketStream
from mwiproxy.wire.addr import Address

WAIT = 10.0  # s: the wide bound for an event that should come at once


async def _echo(sock: socket.socket, _peer: str) -> None:
    stream = SocketStream(sock)
    while data := await stream.read(1024):
        await stream.write(data)


async def _until(pred: Callable[[], bool]) -> None:
    for _ in range(int(WAIT / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def _caller(port: int, said: bytes
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(said)
    return reader, writer


async def _not_answered(reader: asyncio.StreamReader) -> bool:
    """Nothing comes (no echo, no EOF, no reset) for a while: the caller is waiting."""
    try:
        await asyncio.wait_for(reader.read(1), 0.3)
    except TimeoutError:
        return True
    return False


# -- the queueing cap ---------------------------------------------------------------


def test_a_burst_over_the_cap_is_served_in_turn_and_nobody_is_reset():
    async def main() -> None:
        listener = Listener(Address("tcp", "127.0.0.1", 0), _echo, max_connections=2)
        listener.start()
        port = listener.address[1]
        callers = await asyncio.gather(*(_caller(port, b"%d" % i) for i in range(6)))
        answers = {asyncio.ensure_future(r.readexactly(1)): i
                   for i, (r, _) in enumerate(callers)}
        await _until(lambda: sum(t.done() for t in answers) == 2)
        await asyncio.sleep(0.3)
        assert sum(t.done() for t in answers) == 2  # the other four wait their turn
        served: list[int] = []
        while answers:
            done, _ = await asyncio.wait(answers, timeout=WAIT,
                                         return_when=asyncio.FIRST_COMPLETED)
            assert done, f"callers {sorted(answers.values())} were never served"
            for task in done:
                i = answers.pop(task)
                assert task.result() == b"%d" % i  # an EOF or a reset would raise here
                assert listener.active <= 2
                served.append(i)
                callers[i][1].close()
        assert sorted(served) == list(range(6))
        st = listener.stats()
        assert st.accepted == st.handed == 6 and st.accept_errors == 0
        await listener.drain(0)

    asyncio.run(main())


def _acceptors_listening(listener: Listener) -> int:
    """How many fds hold the listening socket besides the listener's own: an acceptor
    (native or twin) accepts on a dup, closed once it has really stopped."""
    own = listener._sock
    assert own is not None
    inode = os.fstat(own.fileno()).st_ino
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            st = os.stat(f"/proc/self/fd/{fd}")
            count += stat.S_ISSOCK(st.st_mode) and st.st_ino == inode
    return count - 1


def test_at_the_cap_callers_wait_in_the_backlog_and_are_taken_one_per_slot():
    """The cap is exact: at max_connections the acceptor has no slot left and takes no
    caller off the listening socket (they are connected by the kernel, not accepted); a
    session that ends gives one slot, and exactly one caller is taken. Nobody is reset
    and nobody is held accepted."""

    async def main() -> None:
        listener = Listener(Address("tcp", "127.0.0.1", 0), _echo, max_connections=1)
        listener.start()
        port = listener.address[1]
        first = await _caller(port, b"a")
        assert await asyncio.wait_for(first[0].readexactly(1), WAIT) == b"a"
        assert listener.full and listener.accepting
        second = await _caller(port, b"b")  # connected by the kernel, in the backlog
        third = await _caller(port, b"c")
        assert all(await asyncio.gather(_not_answered(second[0]), _not_answered(third[0])))
        assert listener.stats().accepted == 1  # not taken off the socket
        assert _acceptors_listening(listener) == 1  # out of slots, not closed
        first[1].close()  # a slot: the acceptor takes 'b' (and no one after it)
        assert await asyncio.wait_for(second[0].readexactly(1), WAIT) == b"b"
        assert await _not_answered(third[0])
        assert listener.stats().accepted == 2
        second[1].close()
        assert await asyncio.wait_for(third[0].readexactly(1), WAIT) == b"c"
        third[1].close()
        await _until(lambda: not listener.full and not listener.active)
        fourth = await _caller(port, b"d")
        assert await asyncio.wait_for(fourth[0].readexactly(1), WAIT) == b"d"
        fourth[1].close()
        st = listener.stats()
        assert st.accepted == st.handed == 4
        await listener.drain(0)

    asyncio.run(main())


def test_callers_waiting_for_a_slot_are_turned_away_by_a_drain():
    async def main() -> None:
        listener = Listener(Address("tcp", "127.0.0.1", 0), _echo, max_connections=1)
        listener.start()
        port = listener.address[1]
        first = await _caller(port, b"a")
        assert await asyncio.wait_for(first[0].readexactly(1), WAIT) == b"a"
        second = await _caller(port, b"b")
        assert await _not_answered(second[0])
        draining = asyncio.ensure_future(listener.drain(WAIT))
        # the waiting caller is not served; the open session still is
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(second[0].readexactly(1), WAIT)
        first[1].write(b"z")
        assert await asyncio.wait_for(first[0].readexactly(1), WAIT) == b"z"
        first[1].close()
        assert await asyncio.wait_for(draining, WAIT) is True

    asyncio.run(main())


# -- Unix sockets ---------------------------------------------------------------------


def test_a_unix_socket_is_private_and_replaces_only_a_stale_one(tmp_path):
    path = str(tmp_path / "run" / "pg.sock")

    async def main() -> None:
        listener = Listener(Address("unix", path=path), _echo)
        listener.start()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"hi")
        assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"hi"
        writer.close()
        # a second listener on a live socket must not steal it
        with pytest.raises(OSError, match="in use by a running process"):
            Listener(Address("unix", path=path), _echo).start()
        await listener.drain(0)
        assert not os.path.exists(path)

    asyncio.run(main())
    stale = socket.socket(socket.AF_UNIX)  # left behind by a process that died
    stale.bind(path)
    stale.close()

    async def again() -> None:
        listener = Listener(Address("unix", path=path), _echo)
        listener.start()
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"ok")
        assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"ok"
        writer.close()
        await listener.drain(0)

    asyncio.run(again())


# -- out of file descriptors ------------------------------------------------------------

_EMFILE_SERVER = textwrap.dedent("""
    import asyncio, logging, os, resource, sys
    from mwiproxy.relay.listen import Listener
    from mwiproxy.relay.streams import SocketStream
    from mwiproxy.wire.addr import Address
    logging.basicConfig(level=logging.WARNING)

    async def serve(sock, peer):
        stream = SocketStream(sock)
        while data := await stream.read(100):
            if data == b"stats":
                await stream.write(repr(listener.stats()._asdict()).encode())
            else:
                await stream.write(data)

    def is_open(fd):  # the fd listdir used is listed, then closed
        try:
            os.fstat(fd)
            return True
        except OSError:
            return False

    async def main():
        global listener
        listener = Listener(Address("tcp", "127.0.0.1", 0), serve)
        listener.start()
        used = [fd for fd in map(int, os.listdir("/proc/self/fd")) if is_open(fd)]
        free = [fd for fd in range(max(used) + 3) if fd not in used]
        # fds are numbered below the limit: room for exactly two connections
        resource.setrlimit(resource.RLIMIT_NOFILE, (free[1] + 1, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))
        print(listener.address[1], flush=True)
        await listener.wait()

    asyncio.run(main())
""")


def test_out_of_file_descriptors_the_port_stays_alive(tmp_path):
    server = subprocess.Popen([sys.executable, "-c", _EMFILE_SERVER], stdout=subprocess.PIPE,
                              stderr=open(tmp_path / "err", "w"), text=True)  # noqa: SIM115
    try:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        callers = [socket.create_connection(("127.0.0.1", port), timeout=WAIT)
                   for _ in range(6)]
        for i, c in enumerate(callers):
            c.sendall(b"%d" % i)
        # the server can hold two; the rest wait while accept fails with EMFILE; each
        # caller is served once an earlier one hangs up
        for i, c in enumerate(callers):
            assert c.recv(10) == b"%d" % i
            c.close()
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as c:
            c.sendall(b"stats")
            st = eval(c.recv(400))  # noqa: S307
        accepted, handed, accept_errors = st["accepted"], st["handed"], st["accept_errors"]
        assert accepted == handed == 7
        assert accept_errors >= 1
    finally:
        server.terminate()
        server.wait(WAIT)
    assert "accept(s) failed" in (tmp_path / "err").read_text()


# -- the local proxy accepts through the Acceptor ----------------------------------------

USER_CA = create_authority("user", "c")
HOST_CA = create_authority("host", "c")


def _creds() -> tuple[bytes, bytes, bytes]:
    key = generate_private_key()
    ident = Identity(user="bot-x", bot_name="x",
                     route=DatabaseRoute("example-server", "postgres", "alice", "example-db"))
    cert = USER_CA.sign_identity(ident, key.public_key(), dt.timedelta(minutes=5))
    return cert_pem(cert), private_key_pem(key), HOST_CA.cert_pem


def _local_proxy_counts(callers: int) -> tuple[int, int]:
    async def main() -> tuple[int, int]:
        proxy = LocalProxy(listen="127.0.0.1:0", proxy_addr="127.0.0.1:1",  # never dialed
                           service="example-server", credentials=_creds)
        await proxy.start()
        held = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(callers)]
        await _until(lambda: proxy.active_connections == callers)
        st = proxy.accept_stats()
        for _, writer in held:
            writer.close()
        await proxy.close()
        return st.accepted, st.handed

    return asyncio.run(main())


def test_the_local_proxy_counts_its_connections_at_the_acceptor():
    assert _local_proxy_counts(3) == (3, 3)


@pytest.mark.native_only
@pytest.mark.skipif(not _native.NATIVE, reason="the native build is not loaded")
def test_the_native_local_proxy_accepts_on_the_worker():
    """The compiled Acceptor (accept4 on the engine's worker thread) is the one counting."""
    from mwiproxy._native import _relay

    assert _native.Acceptor is _relay.Acceptor
    assert _local_proxy_counts(4) == (4, 4)
