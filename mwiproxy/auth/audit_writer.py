"""The audit log's writer thread: events are queued by `put` (which never waits on the
store) and committed in batches, one transaction per batch, in the order they were
queued, so the hash chain stays strict.

When the store fails (disk full, database locked by another process) the batch is kept
and retried with backoff until it is written; nothing is dropped for a failure. What
bounds memory is the queue: beyond `max_pending` events a new event is dropped, logged
in full, counted, and the count (with the types dropped) is itself written as an
`audit.overflow` event as soon as the store takes writes again. A recovery after failed
writes is written as `audit.resumed`.

`flush` waits until everything queued before it is stored; `close` drains the queue
(bounded) and logs in full whatever could not be stored. A store that says it is closed
(`StoreClosed`) is not retried: the writer stops and logs in full what it held.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mwiproxy.auth.storage.base import StoreClosed
from mwiproxy.auth.storage.chain import EncodedFields, Fields, session_of
from mwiproxy.process.logs import with_rfc3339_times

log = logging.getLogger("mwiproxy.audit")

# (time, type, fields): an event as queued (fields: a dict, or already encoded)
Pending = tuple[float, str, Fields]
Append = Callable[[Sequence[Pending]], list[int]]

OVERFLOW = "audit.overflow"
RESUMED = "audit.resumed"

MAX_PENDING = 50_000  # a few hundred bytes each: tens of MB at most
MAX_BATCH = 500
# once an event is queued, the writer gathers more for this long before it writes: fewer
# transactions (and thread wake-ups) per event; a flush or a full batch cuts it short
GATHER = 0.05
# ...and this long while every event queued is a query-audit one (QUIET_PREFIXES: a
# busy session's commands, tens of thousands a second): each transaction rewrites the
# tail pages of the table and its indexes, so fewer, larger ones cost the store less per
# command (measured: bench/RESULTS.md, session 13). Any other event queued (a session,
# a refusal, a lock) ends the wait at GATHER as before.
GATHER_QUERIES = 0.5
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 5.0
# an idle writer thread ends; the next event starts another
LINGER = 30.0
# while writes fail: log the error again at most this often
REPEAT_ERROR_LOG = 30.0


@dataclass
class WriterStats:
    queued: int = 0  # accepted into the queue
    written: int = 0  # of those, stored
    dropped: int = 0  # refused by a full queue (each also logged)
    failures: int = 0  # failed store attempts (each retried)
    last_error: str = ""


@dataclass
class _Trouble:
    """What the next batch must report: drops since the last report, a recovery."""
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    first_drop: float = 0.0
    last_drop: float = 0.0
    failing_since: float = 0.0  # time of the first failed attempt of an outage
    failed_attempts: int = 0
    error: str = ""
    resumed: dict[str, Any] | None = None


# Query-audit events (statements, parameters) stay out of the process log: only their
# type and session are logged when one could not be stored. MWIPROXY_LOG_QUERY_AUDIT=1
# mirrors them in full like the others.
QUIET_PREFIXES = ("db.session.query", "db.session.postgres.")


def _query_audit(type_: str) -> bool:
    return type_.startswith(QUIET_PREFIXES)


def _quiet(type_: str) -> bool:
    return _query_audit(type_) and os.environ.get("MWIPROXY_LOG_QUERY_AUDIT") != "1"


def log_event(event: Pending, event_id: int | None, note: str = "") -> None:
    """The event's mirror in the process log, with its id once stored: an object field
    `event` (`{"msg": "audit", "event": {"id", "time", "type", ...}}` in JSON logs),
    the shape `mwictl audit --format json` prints. Query-audit events are not mirrored
    (QUIET_PREFIXES)."""
    when, type_, fields = event
    if _quiet(type_):
        if not note:
            return
        fields = {"session": session_of(fields) or ""}
    elif isinstance(fields, EncodedFields):
        fields = fields.as_dict()
    shown = with_rfc3339_times({"id": event_id, "time": when, "type": type_, **fields})
    if note:
        log.error("%s", note, extra={"event": shown})
    else:
        log.info("audit", extra={"event": shown})


class AuditWriter:
    def __init__(self, append: Append, clock: Callable[[], float] = time.time, *,
                 max_pending: int = MAX_PENDING, max_batch: int = MAX_BATCH,
                 backoff: tuple[float, float] = (BACKOFF_FIRST, BACKOFF_MAX),
                 linger: float = LINGER, gather: float = GATHER,
                 gather_queries: float = GATHER_QUERIES) -> None:
        self._append = append
        self._clock = clock
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._backoff = backoff
        self._linger = linger
        self._gather = gather
        self._gather_queries = max(gather, gather_queries)
        self._urgent = 0  # events queued that are not query audit (_query_audit)
        self._idle = False  # the writer waits for a first event: wake it
        self._hurry = False  # a flush waits: write what is queued now
        self._queue: collections.deque[Pending] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closing = False
        self._give_up_at = float("inf")  # set by close: stop retrying then
        self._trouble = _Trouble()
        self._reports_in_flight = 0
        self.stats = WriterStats()
        # told the seconds of each batch stored (one transaction): the write metrics
        self.observe_batch: Callable[[float], None] = lambda seconds: None

    def counts(self) -> tuple[int, int, int]:
        """(events written, dropped by a full queue, queued now), for the metrics."""
        with self._cond:
            return self.stats.written, self.stats.dropped, len(self._queue)

    # -- the callers' side -------------------------------------------------------------

    def put(self, type_: str, fields: Fields) -> bool:
        """Queue an event (the time is taken here, in queue order); never waits on the
        store. False: not queued (full queue or closed), logged in full."""
        return self.put_many(type_, [fields]) == 1

    def put_many(self, type_: str, many: Sequence[Fields]) -> int:
        """`put` for events of one type taken together (one lock, one time): how many
        were queued; the others (full queue, closed) are counted and logged in full."""
        refused: list[Pending] = []
        with self._cond:
            now = self._clock()
            if self._closing:
                refused = [(now, type_, f) for f in many]
                note = "audit event after the audit log closed, not stored"
            else:
                room = max(0, self._max_pending - len(self._queue))
                before = len(self._queue)
                self._queue.extend((now, type_, f) for f in many[:room])
                for f in many[room:]:
                    event: Pending = (now, type_, f)
                    self._count_drop(event)
                    refused.append(event)
                note = "audit queue full, event not stored"
                taken = len(self._queue) - before
                if taken and not _query_audit(type_):
                    self._urgent += taken
                    self._cond.notify_all()  # a writer gathering queries: GATHER now
                if taken:
                    self.stats.queued += taken
                    self._ensure_thread()
                    if self._idle or (before < self._max_batch <= len(self._queue)):
                        self._cond.notify()
        for event in refused:
            log_event(event, None, note)
        return len(many) - len(refused)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued before this call is stored (True), or timeout."""
        with self._cond:
            target = self.stats.queued
            self._hurry = True
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: self._flushed(target) or self._stopped(), timeout) \
                and self._flushed(target)

    def _flushed(self, target: int) -> bool:
        """Stored up to `target`, and the writer's own reports due by now too."""
        return (self.stats.written >= target and not self._has_report()
                and not self._reports_in_flight)

    def _stopped(self) -> bool:
        return self._closing and self._thread is None

    @property
    def pending(self) -> int:
        with self._cond:
            return self.stats.queued - self.stats.written

    def close(self, timeout: float) -> int:
        """Store what is queued, retrying failures for up to `timeout` seconds, and stop
        the thread. Returns how many events could not be stored (each logged)."""
        with self._cond:
            self._closing = True
            self._give_up_at = time.monotonic() + timeout
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            self._urgent = 0
        for event in left:
            log_event(event, None, "audit event not stored at shutdown")
        return self.stats.queued - self.stats.written

    # -- the writer thread -------------------------------------------------------------

    def _count_drop(self, event: Pending) -> None:
        t = self._trouble
        t.dropped[event[1]] += 1
        t.first_drop = t.first_drop or event[0]
        t.last_drop = event[0]
        self.stats.dropped += 1

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-writer",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            batch, real = self._take()
            if not batch:
                return
            try:
                stored = self._write(batch)
            except StoreClosed as e:
                self._store_closed(batch, e)
                return
            if not stored:
                with self._cond:  # closing, gave up: back to the queue for close()
                    self._queue.extendleft(reversed(batch))
                    self._thread = None
                    self._cond.notify_all()
                return
            with self._cond:
                self.stats.written += real
                self._reports_in_flight = 0
                self._cond.notify_all()

    def _store_closed(self, batch: list[Pending], error: StoreClosed) -> None:
        """The store will take no more writes: stop, as if closed, and log in full what
        was held (nothing is retried forever against a closed store)."""
        with self._cond:
            self._closing = True
            left = batch + list(self._queue)
            self._queue.clear()
            self._urgent = 0
            self._thread = None
            self._cond.notify_all()
        log.error("the audit log is closed (%s); %d event(s) not stored, logged in full",
                  error, len(left))
        for event in left:
            log_event(event, None, "audit store closed, event not stored")

    def _take(self) -> tuple[list[Pending], int]:
        """The next batch (queued events first, then this writer's own reports) and how
        many of it were queued; ([], 0) when the thread should end."""
        with self._cond:
            while not self._queue and not self._has_report():
                self._idle = True
                woken = not self._closing and self._cond.wait(self._linger)
                self._idle = False
                if not woken:
                    if self._queue or self._has_report():
                        break
                    self._thread = None
                    self._cond.notify_all()
                    return [], 0
            self._gather_batch()
            self._hurry = False
            n = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            if self._urgent:
                self._urgent -= sum(not _query_audit(e[1]) for e in batch)
            reports = self._reports()
            self._reports_in_flight = len(reports)
            return batch + reports, n

    def _gather_batch(self) -> None:
        """Inside the lock, with something queued: wait GATHER for more, then on up to
        GATHER_QUERIES while only query-audit events are queued."""
        def full() -> bool:
            return self._closing or self._hurry or len(self._queue) >= self._max_batch

        started = time.monotonic()
        if self._cond.wait_for(full, self._gather) or self._has_report():
            return
        left = self._gather_queries - (time.monotonic() - started)
        if left > 0 and not self._urgent:
            self._cond.wait_for(lambda: full() or self._urgent, left)

    def _has_report(self) -> bool:
        return bool(self._trouble.dropped) or self._trouble.resumed is not None

    def _reports(self) -> list[Pending]:
        """Inside the lock: the overflow and recovery events due, and reset."""
        t, now = self._trouble, self._clock()
        out: list[Pending] = []
        if t.resumed is not None:
            out.append((now, RESUMED, t.resumed))
            t.resumed = None
        if t.dropped:
            out.append((now, OVERFLOW, {
                "dropped": sum(t.dropped.values()), "types": dict(t.dropped),
                "first": t.first_drop, "last": t.last_drop, "max_pending": self._max_pending,
                "error": t.error}))
            t.dropped, t.first_drop, t.last_drop = collections.Counter(), 0.0, 0.0
            if not t.failed_attempts:
                t.error = ""
        return out

    def _write(self, batch: list[Pending]) -> bool:
        """Store the batch, retrying with backoff; False only when closing gave up."""
        delay, last_log = self._backoff[0], 0.0
        while True:
            started = time.monotonic()
            try:
                ids = self._append(batch)
            except StoreClosed:
                raise
            except Exception as e:  # kept and retried: nothing is dropped for a failure
                last_log = self._failed(e, len(batch), last_log)
                with self._cond:
                    if time.monotonic() >= self._give_up_at:
                        return False
                    wait = min(delay, max(0.0, self._give_up_at - time.monotonic()))
                    self._cond.wait_for(lambda: time.monotonic() >= self._give_up_at, wait)
                delay = min(delay * 2, self._backoff[1])
                continue
            self.observe_batch(time.monotonic() - started)
            self._succeeded()
            mirror_quiet = os.environ.get("MWIPROXY_LOG_QUERY_AUDIT") == "1"
            for event, event_id in zip(batch, ids, strict=True):
                if mirror_quiet or not _query_audit(event[1]):
                    log_event(event, event_id)  # query-audit events skipped here: per event
            return True

    def _failed(self, error: Exception, size: int, last_log: float) -> float:
        now = time.monotonic()
        with self._cond:
            t = self._trouble
            first = not t.failed_attempts
            t.failing_since = t.failing_since or self._clock()
            t.failed_attempts += 1
            t.error = f"{type(error).__name__}: {error}"
            self.stats.failures += 1
            self.stats.last_error = t.error
            pending = len(self._queue) + size
        if first or now - last_log >= REPEAT_ERROR_LOG:
            log.error("the audit log cannot be written (%s); %d event(s) kept and retried",
                      t.error, pending)
            return now
        return last_log

    def _succeeded(self) -> None:
        with self._cond:
            t = self._trouble
            if not t.failed_attempts:
                return
            t.resumed = {"failed_attempts": t.failed_attempts, "since": t.failing_since,
                         "error": t.error}
            t.failing_since, t.failed_attempts = 0.0, 0
        log.warning("the audit log is written again after %d failed attempt(s) (%s)",
                    t.resumed["failed_attempts"], t.resumed["error"])
