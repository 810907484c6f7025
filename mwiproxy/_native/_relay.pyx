# cython: language_level=3
"""Native relay: Python decides, csrc/mwi_relay.c + mwi_engine.c move the bytes.

Either side of a relay is a plain socket fd or a handshaken TLSStream (_tls.pxi), which
may be TLS inside TLS (TLSStream.wrap_inner): the engine's worker then runs OpenSSL itself
(csrc/mwi_relay_tls.c; both layers of an inner side in csrc/mwi_tls_conn.c).

N Engines (N worker threads, workers.py: one per core by default) per event loop; a new
relay goes to the engine with the fewest relays, acceptors stay on the first. The loop
hears from an engine only when relays end (or hold a message): each engine's done eventfd
is watched with loop.add_reader, and each finished relay gets its on_done(reason) call
there. Nothing here runs per chunk. The engines of a loop share one CounterTable: a slot
means the same label set on every engine and a read sums the engines.
"""

cimport cython
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

import os
import weakref

from mwiproxy._native.counters import SLOTS, CounterTable, check_slot
from mwiproxy._native.workers import check_workers, default_workers
from mwiproxy._native.relaytypes import (
    AUDIT_PROTOCOLS,
    REASON_CLOSED,
    RelayStats,
    check_audit,
    check_close_reason,
    check_inspect,
    timeout_ms,
    verdict_bytes,
)

assert SLOTS == MWI_COUNTER_SLOTS, "counters.SLOTS and csrc/mwi_relay.h disagree"

_engines: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # loop -> [Engine]

include "_tls.pxi"
include "_accept.pxi"
include "_inspect.pxi"
include "_pgaudit.pxi"


cdef class Engine:
    """The native worker serving one event loop."""

    def __cinit__(self, loop, *, bint use_splice=True, uint32_t pipe_size=0,
                  uint32_t buf_size=0, uint32_t pool_max=0):
        cdef mwi_engine_config cfg
        cdef int err = 0
        cfg.use_splice = use_splice
        cfg.pipe_size = pipe_size
        cfg.buf_size = buf_size
        cfg.pool_max = pool_max
        self.eng = mwi_engine_new(&cfg, &err)
        if self.eng == NULL:
            raise OSError(err, os.strerror(err))
        self.running = {}
        self.acceptors = {}
        self.next_id = 1
        self.done_fd = mwi_engine_done_fd(self.eng)
        self.reader = _SlotReader()
        self.reader.eng = self.eng
        self.counters = CounterTable(self.reader.read)
        self.loop_ref = weakref.ref(loop)
        loop.add_reader(self.done_fd, self._drain)

    def __dealloc__(self):
        if self.eng != NULL:
            if self.reader is not None:
                self.reader.eng = NULL
            mwi_engine_free(self.eng)
            self.eng = NULL

    def _drain(self):
        cdef mwi_relay *r
        cdef Relay relay
        cdef Acceptor acceptor
        cdef mwi_accepted acc
        mwi_engine_ack_done(self.eng)
        while mwi_engine_pop_accepted(self.eng, &acc):
            acceptor = self.acceptors.get(acc.user)
            if acceptor is None:   # closed meanwhile: nobody wants this connection
                _drop_conn(&acc)
            else:
                acceptor._deliver(&acc)
            mwi_accepted_clear(&acc)
        while True:   # held messages before the finished relays: a relay popped as held
            r = mwi_engine_pop_held(self.eng)   # is not released until popped as done
            if r == NULL:
                break
            relay = self.running.get(mwi_relay_user(r))
            if relay is not None:
                relay._held()
        ended = {}
        while True:
            r = mwi_engine_pop_done(self.eng)
            if r == NULL:
                break
            relay = self.running.pop(mwi_relay_user(r), None)
            if relay is None:   # its Python object is gone (engine teardown): just free it
                mwi_relay_release(r)
                continue
            ended[relay.rid] = (relay, mwi_relay_reason_name(
                mwi_relay_reason_get(r)).decode("ascii"), mwi_relay_errno(r))
        # the records of relays that ended were written before they were done: all here
        self._take_audit(ended)
        for relay, reason, err in ended.values():
            relay._finished(reason, err)

    cdef void _take_audit(self, dict ended):
        """Hand the engine's audit records to their relays, one call per relay."""
        cdef const unsigned char *p = NULL
        cdef size_t n, off = 0
        cdef uint32_t rlen
        cdef uint64_t user, last = 0
        cdef Relay relay
        if self.eng == NULL or self.audited == 0 and not ended:
            return
        n = mwi_engine_audit_take(self.eng, &p)
        cdef dict batches = {}
        cdef list records = None
        while off + 12 <= n:
            memcpy(&rlen, p + off, 4)
            memcpy(&user, p + off + 4, 8)
            if records is None or user != last:  # a relay's records mostly come in runs
                records = batches.get(user)
                if records is None:
                    records = batches[user] = []
                last = user
            records.append(p[off + 12:off + 12 + rlen])
            off += 12 + rlen
        for user, records in batches.items():
            relay = self.running.get(user)
            if relay is None and user in ended:
                relay = ended[user][0]
            if relay is not None:
                relay._audit(records)

    def _audit_tick(self):
        self.audit_timer = None
        self._take_audit({})
        self._arm_audit_timer()

    def _arm_audit_timer(self):
        loop = self.loop_ref()
        if self.audited > 0 and self.audit_timer is None and loop is not None \
                and not loop.is_closed():
            self.audit_timer = loop.call_later(AUDIT_DRAIN_INTERVAL, self._audit_tick)

    def close(self):
        """Stop the worker; relays still running end as "closed"."""
        cdef Relay relay
        cdef Acceptor acceptor
        if self.eng == NULL:
            return
        loop = self.loop_ref()
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.done_fd)
        if self.audit_timer is not None:
            self.audit_timer.cancel()
            self.audit_timer = None
        self._drain()
        for relay in self.running.values():
            relay._final = relay._stats_now()
        for acceptor in self.acceptors.values():
            if acceptor.a != NULL:   # a closed one kept its final counts at close()
                acceptor._final = acceptor._stats_now()
        self.reader.final = self.reader.read(MWI_COUNTER_SLOTS)  # the sums outlive it
        self.reader.eng = NULL
        mwi_engine_free(self.eng)   # joins the worker: every relay and acceptor is freed
        self.eng = NULL
        acceptors, self.acceptors = self.acceptors, {}
        for acceptor in acceptors.values():
            acceptor.a = NULL
        running, self.running = self.running, {}
        for relay in running.values():
            relay.r = NULL
            relay._finished(REASON_CLOSED, 0)

    @property
    def relays_running(self):
        return len(self.running)


cdef class _SlotReader:
    """Reads the engine's counter slots in one call (no reference back to the Engine,
    so the CounterTable makes no cycle with it)."""

    def read(self, Py_ssize_t n):
        cdef uint64_t (*buf)[2]
        cdef size_t got
        if self.eng == NULL:
            final = self.final or []
            return final[:n] + [(0, 0)] * (n - len(final[:n]))
        n = max(0, min(n, MWI_COUNTER_SLOTS))
        buf = <uint64_t (*)[2]>malloc(max(n, 1) * sizeof(uint64_t) * 2)
        if buf == NULL:
            raise MemoryError()
        try:
            got = mwi_engine_counters_read(self.eng, buf, n)
            return [(buf[i][0], buf[i][1]) for i in range(got)]
        finally:
            free(buf)


class _SummedSlots:
    """Reads the same slots of every engine of a loop and adds them up."""

    def __init__(self, readers):
        self.readers = readers

    def read(self, n):
        total = [[0, 0] for _ in range(n)]
        for reader in self.readers:
            for i, (a, b) in enumerate(reader.read(n)):
                total[i][0] += a
                total[i][1] += b
        return [(a, b) for a, b in total]


def engines_for(loop, workers=None, **config):
    """The engines serving `loop`, created on first use: `workers` of them (None: the
    process default, workers.default_workers()), each with `config` (see Engine)."""
    cdef Engine engine
    engines = _engines.get(loop)
    if engines is None:
        n = default_workers() if workers is None else check_workers(workers)
        engines = []
        try:
            for _ in range(n):
                engines.append(Engine(loop, **config))
        except BaseException:
            for engine in engines:
                engine.close()
            raise
        readers = []
        for engine in engines:
            readers.append(engine.reader)
        table = CounterTable(_SummedSlots(readers).read)
        for engine in engines:
            engine.counters = table
        _engines[loop] = engines
    return tuple(engines)


def engine_for(loop, workers=None, **config):
    """The first engine serving `loop` (its acceptors run there; its `counters` are the
    loop's, all engines summed), the engines created on first use (see engines_for)."""
    return engines_for(loop, workers, **config)[0]


cdef Py_ssize_t _turn = 0


cdef Engine _pick_engine(loop):
    """The engine of `loop` with the fewest relays; ties taken in turn (round robin)."""
    global _turn
    cdef Engine best = None
    cdef Engine engine
    cdef Py_ssize_t i, n
    engines = engines_for(loop)
    n = len(engines)
    _turn = (_turn + 1) % n if n else 0
    for i in range(n):
        engine = engines[(_turn + i) % n]
        if best is None or engine.load < best.load:
            best = engine
    return best


def close_engine(loop):
    """Stop every engine of `loop`; relays still running end as "closed"."""
    cdef Engine engine
    for engine in _engines.pop(loop, ()):
        engine.close()


@cython.no_gc_clear
cdef class Relay:
    """Joins two connected stream sockets (it owns both fds from here on). Each side is
    a plain fd or a handshaken TLSStream (its TLS state and fd are taken over), and may
    speak the `-ping` framing (framed_a / framed_b: a relaytypes.Framing).

    inspect ("resp", "mysql", "mongodb"): side A's messages are framed and the protocol's
    marked ones held (csrc/mwi_inspect.h): reading A pauses and on_held(message) is called
    on the loop (None: A broke the framing); then resume(), or close(farewell, reason=...).
    mongodb: inspect_allowed (the `$db` names that pass natively), inspect_max_message.
    Side B must not be framed then.

    audit ("postgres"): both directions' plaintext goes through the query-audit tap
    (csrc/mwi_pgaudit.h); on_audit(records) is called on the loop with the records (bytes
    each, pgaudit_py.decode reads them) in batches: when the engine's buffer fills, on a
    timer (AUDIT_DRAIN_INTERVAL) and before on_done. A malformed message of side A never
    reaches B (reading A stops; its record says so: close the relay). audit_wait: stop
    reading while records wait, rather than drop those that do not fit. Not with inspect."""

    def __init__(self, loop, a, b, on_done=None, idle_timeout=None, close_timeout=None,
                 framed_a=None, framed_b=None, counter_slot=None, inspect=None,
                 on_held=None, inspect_allowed=(), inspect_max_message=MONGO_MAX_MESSAGE,
                 audit=None, on_audit=None, audit_wait=False):
        cdef Engine engine = _pick_engine(loop)
        cdef uint32_t idle = timeout_ms(idle_timeout)
        cdef uint32_t closing = timeout_ms(close_timeout)
        cdef int fd_a = _side_fd(a), fd_b = _side_fd(b)
        cdef mwi_tls *tls_a = NULL
        cdef mwi_tls *tls_b = NULL
        cdef int proto = check_inspect(inspect, on_held, framed_b)
        cdef bytes allowed = mongo_allowed(inspect_allowed)
        cdef uint32_t max_message = check_max_message(inspect_max_message)
        cdef int audit_proto = check_audit(audit, on_audit, inspect)
        check_slot(counter_slot)
        if fd_a < 0 or fd_b < 0 or fd_a == fd_b:
            raise ValueError("two distinct open fds are needed")
        for side, framing in ((a, framed_a), (b, framed_b)):
            if framing is not None:
                framing.check(isinstance(side, TLSStream) and side.framed)
        self.engine = engine
        self.on_done = on_done
        self.rid = engine.next_id
        engine.next_id += 1
        self.r = mwi_relay_new(engine.eng, fd_a, fd_b, idle, closing, self.rid)
        if self.r == NULL:
            raise MemoryError()
        self.loaded = True   # counted on its engine until it is done (or never started)
        engine.load += 1
        # from here the relay owns the fds (and the TLS state): streams let go of them
        if isinstance(a, TLSStream):
            tls_a = (<TLSStream>a)._take()
            mwi_relay_set_tls(self.r, 0, tls_a)
        if isinstance(b, TLSStream):
            tls_b = (<TLSStream>b)._take()
            mwi_relay_set_tls(self.r, 1, tls_b)
        if framed_a is not None:
            _set_framed(self.r, 0, framed_a)
        if framed_b is not None:
            _set_framed(self.r, 1, framed_b)
        if counter_slot is not None:   # in range (checked above): cannot fail
            mwi_relay_set_counter_slot(self.r, counter_slot)
        if proto:   # checked above: only ENOMEM can fail
            if mwi_relay_set_inspect(self.r, proto) != 0:
                raise MemoryError()
            if inspect == "mongodb" and mwi_relay_set_inspect_mongo(
                    self.r, <const unsigned char *><const char *>allowed, len(allowed),
                    max_message) != 0:
                raise MemoryError()
            self.on_held = on_held
        if audit_proto:
            if mwi_relay_set_audit(self.r, audit_proto, bool(audit_wait)) != 0:
                raise MemoryError()
            self.on_audit = on_audit

    def __dealloc__(self):
        # A relay the worker never saw is ours to free; a started one belongs to the
        # engine until it is popped as finished (then _finished released it already).
        if self.r != NULL and not self.started:
            mwi_relay_release(self.r)
        self.r = NULL
        self._unload()

    cdef void _unload(self):
        if self.loaded:
            self.loaded = False
            self.engine.load -= 1

    def start(self):
        cdef int err
        if self.started or self.r == NULL:
            raise RuntimeError("relay already started")
        err = mwi_relay_start(self.r)
        if err != 0:
            raise OSError(err, os.strerror(err))
        self.started = True
        self.engine.running[self.rid] = self
        if self.on_audit is not None:
            self.engine.audited += 1
            self.engine._arm_audit_timer()

    @property
    def audit_dropped(self):
        """Audit records of this relay dropped because the owner was behind (once done)."""
        return self._audit_dropped

    cdef void _audit(self, list records):
        if self.on_audit is None:
            return
        try:
            self.on_audit(records)
        except BaseException as exc:
            loop = self.engine.loop_ref()
            if loop is None:
                raise
            loop.call_exception_handler({"message": "relay on_audit callback failed",
                                         "exception": exc})

    def close(self, farewell_a=b"", reason=REASON_CLOSED):
        """Ask the relay to end; on_done("closed") follows unless it ended already.

        farewell_a (bytes-like): said to side A before it is closed. Nothing more is read
        from either side; what was already read from B reaches A first, then the
        farewell, then the usual close. Bounded by close_timeout (5 s when none); the first
        farewell given is the one said. See mwi_relay_close_farewell (csrc/mwi_relay.h)."""
        cdef bytes bye = bytes(memoryview(farewell_a))
        cdef const char *p = bye
        cdef int code = check_close_reason(reason)
        if self.r == NULL:
            return
        if self.started:
            if mwi_relay_close_reason(self.r, <mwi_relay_reason>code, p, len(bye)) != 0:
                raise MemoryError()
        else:
            mwi_relay_release(self.r)
            self.r = NULL
            self._final = RelayStats(0, 0, 0, 0)
            self._reason = reason

    def resume(self, message=None):
        """After on_held(message): the message (or `message`, bytes in its place) goes on
        to side B, and reading side A goes on (nothing happens unless a message is held).
        See mwi_relay_resume, mwi_relay_resume_with."""
        cdef bytes replacement = None if message is None else verdict_bytes(message)
        if self.r != NULL and self.started:
            if replacement is None:
                mwi_relay_resume(self.r)
            else:
                self._resume_with(1, replacement)

    def hold_all(self):
        """mongodb: from side A's next message on, every message is held (none passes
        natively). See mwi_relay_hold_all."""
        if self.r != NULL and self.started:
            mwi_relay_hold_all(self.r)

    def answer(self, reply):
        """After on_held(message): `reply` (bytes) goes to side A, in its framing and TLS,
        behind what side B already sent (b"": nothing); the held message is dropped and
        reading side A goes on. See mwi_relay_resume_with."""
        cdef bytes data = verdict_bytes(reply, True)
        if self.r != NULL and self.started:
            self._resume_with(0, data)

    cdef void _resume_with(self, int side, bytes data) except *:
        cdef const char *p = data
        cdef int err = mwi_relay_resume_with(self.r, side, p, len(data))
        if err != 0:
            raise OSError(err, os.strerror(err))

    def stats(self):
        if self._final is not None:
            return self._final
        return self._stats_now()

    @property
    def done(self):
        return self._reason is not None

    @property
    def reason(self):
        return self._reason

    @property
    def errno(self):
        return self._errno

    cdef object _stats_now(self):
        cdef mwi_relay_stats st
        if self.r == NULL:
            return RelayStats(0, 0, 0, 0)
        mwi_relay_stats_get(self.r, &st)
        return RelayStats(st.bytes[0], st.bytes[1], st.chunks[0], st.chunks[1])

    cdef void _held(self):
        """The worker holds a message of side A (or saw its framing break): the owner's
        on_held gets the message (None for a violation)."""
        cdef size_t n = 0
        cdef const unsigned char *p
        if self.r == NULL or self.on_held is None:
            return
        p = mwi_relay_held(self.r, &n)
        message = None if p == NULL else p[:n]
        try:
            self.on_held(message)
        except BaseException as exc:
            loop = self.engine.loop_ref()
            if loop is None:
                raise
            loop.call_exception_handler({"message": "relay on_held callback failed",
                                         "exception": exc})

    cdef void _finished(self, str reason, int err):
        if self.on_audit is not None and self.started:
            self.engine.audited -= 1
        self._unload()
        if self.r != NULL:
            self._final = self._stats_now()
            self._audit_dropped = mwi_relay_audit_dropped(self.r)
            mwi_relay_release(self.r)
            self.r = NULL
        self._reason = reason
        self._errno = err
        cb, self.on_done = self.on_done, None
        if cb is not None:
            try:
                cb(reason)
            except BaseException as exc:
                loop = self.engine.loop_ref()
                if loop is None:
                    raise
                loop.call_exception_handler({"message": "relay on_done callback failed",
                                             "exception": exc})


cdef void _set_framed(mwi_relay *r, int side, framing):
    cdef bytes hdr = bytes(framing.header)
    cdef const char *p = hdr
    mwi_relay_set_framed(r, side, timeout_ms(framing.keepalive), p, len(hdr),
                         framing.payload_left)


cdef int _side_fd(side) except? -2:
    """The fd of one relay side; a TLSStream must be handshaken (checked before anything
    is taken over, so a refused relay leaves both sides to the caller)."""
    if isinstance(side, TLSStream):
        (<TLSStream>side)._require_handshake()
        return (<TLSStream>side).fd
    if isinstance(side, int):
        return side
    raise TypeError(f"a relay side is an fd or a native TLSStream, not {type(side).__name__}")
