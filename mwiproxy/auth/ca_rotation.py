"""CA rotation, as Teleport's `tctl auth rotate` (teleport-facts.md; Teleport's phases).

Each CA kind rotates on its own, through these phases:

- `standby`: no rotation; one CA signs and is trusted.
- `init`: a new CA is generated and trusted everywhere next to the old one; the old one
  still signs. Bots, agents and databases pick up the two-CA bundles now.
- `update_clients`: the new CA signs every new certificate; both stay trusted.
- `update_servers`: the cluster's own servers (the proxy's certificate, inner TLS) are
  re-issued from the new CA and agents renew theirs; both stay trusted.
- `standby` again: the old CA is dropped: only the new one is trusted.
- `rollback` (from init, update_clients or update_servers): the old CA signs again,
  the new one stays trusted so certificates it issued keep working until renewed; then
  `standby` drops the new one.

Manual mode moves one phase per `mwictl auth rotate --manual --phase P`; automatic mode
walks init → update_clients → update_servers → standby a third of the grace period
apart (Teleport's schedule), driven by `tick` from the cluster's timer. Every phase is
audited (`ca.rotate.phase`), and refused requests too (`ca.rotate.refused`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from mwiproxy.auth import audit
from mwiproxy.auth.errors import BadRequest
from mwiproxy.config.durations import format_duration
from mwiproxy.identity.authorities import CA_KINDS, AuthoritySet, spki_pin

STANDBY, INIT, UPDATE_CLIENTS, UPDATE_SERVERS, ROLLBACK = (
    "standby", "init", "update_clients", "update_servers", "rollback")
PHASES = (STANDBY, INIT, UPDATE_CLIENTS, UPDATE_SERVERS, ROLLBACK)
# where each phase may go next
NEXT: dict[str, tuple[str, ...]] = {
    STANDBY: (INIT,),
    INIT: (UPDATE_CLIENTS, ROLLBACK),
    UPDATE_CLIENTS: (UPDATE_SERVERS, ROLLBACK),
    UPDATE_SERVERS: (STANDBY, ROLLBACK),
    ROLLBACK: (STANDBY,),
}
AUTO_ORDER = (INIT, UPDATE_CLIENTS, UPDATE_SERVERS, STANDBY)
# the automatic schedule is looked at at least this often (seconds), and at once when a
# rotation starts
SCHEDULE_POLL = 30.0
DEFAULT_GRACE_PERIOD = dt.timedelta(hours=30)  # Teleport's default

ChangeListener = Callable[[str, str], object]  # the result is ignored

log = logging.getLogger("mwiproxy.ca_rotation")


class RotationError(BadRequest):
    """An illegal rotation request; the message says which phases are allowed."""


class RotationService:
    def __init__(self, cas: AuthoritySet, audit_log: audit.AuditLog,
                 clock: Callable[[], float] = time.time) -> None:
        self._cas = cas
        self._audit = audit_log
        self._clock = clock
        self._mu = threading.Lock()
        self._listeners: list[ChangeListener] = []

    def on_change(self, listener: ChangeListener) -> None:
        """Call listener(kind, phase) after every phase change (from any thread)."""
        self._listeners.append(listener)

    def phase(self, kind: str) -> str:
        return str(self._cas.rotation(kind).get("phase", STANDBY))

    # -- requests ----------------------------------------------------------------------

    def rotate(self, kind: str, *, manual: bool, phase: str = "",
               grace_period: dt.timedelta = DEFAULT_GRACE_PERIOD, by: str = "") -> dict[str, Any]:
        """`mwictl auth rotate`: start an automatic rotation, or move one manual phase."""
        try:
            target = self._check_request(kind, manual, phase, grace_period)
        except RotationError as e:
            self._audit.emit(audit.CA_ROTATE_REFUSED, ca_type=kind, phase=phase, by=by,
                             reason=e.message)
            raise
        with self._mu:
            current = self.phase(kind)
            if target not in NEXT[current]:
                why = _illegal(kind, current, target)
                self._audit.emit(audit.CA_ROTATE_REFUSED, ca_type=kind, phase=target, by=by,
                                 reason=why)
                raise RotationError(why)
            mode = "manual" if manual else "auto"
            meta = self._cas.rotation(kind) if current != STANDBY else {}
            if current == STANDBY:
                meta = _new_rotation(mode, self._clock(), grace_period)
            meta["mode"] = mode
            self._move(kind, current, target, meta, by)
        return self.status(kind)

    def _check_request(self, kind: str, manual: bool, phase: str,
                       grace_period: dt.timedelta) -> str:
        if kind not in CA_KINDS:
            raise RotationError(f"unknown CA type {kind!r}: use one of {', '.join(CA_KINDS)}")
        if grace_period < dt.timedelta(0):
            raise RotationError("the grace period cannot be negative")
        if not manual:
            if phase:
                raise RotationError("--phase needs --manual (automatic rotation walks every "
                                    "phase by itself)")
            return INIT
        if phase not in PHASES:
            raise RotationError(f"--manual needs --phase: one of {', '.join(PHASES)}")
        return phase

    # -- the automatic schedule ----------------------------------------------------------

    def tick(self) -> list[tuple[str, str]]:
        """Advance every automatic rotation whose next phase is due; returns the moves."""
        moves = []
        with self._mu:
            now = self._clock()
            for kind in CA_KINDS:
                meta = self._cas.rotation(kind)
                current = meta.get("phase", STANDBY)
                if meta.get("mode") != "auto" or current not in AUTO_ORDER[:-1]:
                    continue
                target = AUTO_ORDER[AUTO_ORDER.index(current) + 1]
                if now >= float(meta["schedule"][target]):
                    self._move(kind, current, target, meta, "auto")
                    moves.append((kind, target))
        return moves

    def seconds_to_next(self) -> float | None:
        """How long until the next automatic phase is due (None: no automatic rotation)."""
        due = []
        for kind in CA_KINDS:
            meta = self._cas.rotation(kind)
            current = meta.get("phase", STANDBY)
            if meta.get("mode") == "auto" and current in AUTO_ORDER[:-1]:
                target = AUTO_ORDER[AUTO_ORDER.index(current) + 1]
                due.append(float(meta["schedule"][target]) - self._clock())
        return max(0.0, min(due)) if due else None

    # -- the moves ---------------------------------------------------------------------

    def _move(self, kind: str, current: str, target: str, meta: dict[str, Any],
              by: str) -> None:
        old, new = meta.get("old", ""), meta.get("new", "")
        if target == INIT:
            old = self._cas.names(kind)[0]
            new = self._cas.generate(kind)
            active, trusted = old, [old, new]
        elif target in (UPDATE_CLIENTS, UPDATE_SERVERS):
            active, trusted = new, [new, old]
        elif target == ROLLBACK:
            active, trusted = old, [old, new]
        elif current == ROLLBACK:  # standby after a rollback: the new CA goes
            active, trusted = old, [old]
        else:  # standby after update_servers: the old CA goes
            active, trusted = new, [new]
        mode = str(meta.get("mode") or "manual")
        meta = {**meta, "phase": target, "old": old, "new": new, "changed": self._clock()}
        if target == STANDBY:
            meta = {"phase": STANDBY, "last_rotated": self._clock(),
                    "last_result": "rolled back" if current == ROLLBACK else "rotated"}
        self._cas.set_trust(kind, active, trusted, meta)
        ca = self._cas[kind]
        self._audit.emit(audit.CA_ROTATE_PHASE, ca_type=kind, phase=target, previous=current,
                         mode=mode, by=by, active=spki_pin(ca.cert),
                         trusted=[spki_pin(c) for c in ca.trusted_certs])
        for listener in self._listeners:
            listener(kind, target)

    # -- status ------------------------------------------------------------------------

    def status(self, kind: str | None = None) -> dict[str, Any]:
        kinds = [kind] if kind else list(CA_KINDS)
        out = {}
        for k in kinds:
            ca, meta = self._cas[k], self._cas.rotation(k)
            entry = {"phase": meta.get("phase", STANDBY), "mode": meta.get("mode", ""),
                     "active": spki_pin(ca.cert),
                     "trusted": [spki_pin(c) for c in ca.trusted_certs]}
            if "schedule" in meta and meta.get("phase", STANDBY) != STANDBY:
                entry["schedule"] = meta["schedule"]
                entry["grace_period"] = meta.get("grace_period", "")
            out[k] = entry
        return out

    def signers(self) -> dict[str, str]:
        """The key identifier of each kind's active CA: an agent whose certificates name
        another issuer renews them (update_clients / update_servers / rollback)."""
        return {k: self._cas[k].key_id for k in CA_KINDS}


async def drive_schedule(rotation: RotationService) -> None:
    """The cluster's timer for automatic rotations: sleeps until the next phase is due
    (or a phase changed), then advances what is due. Runs until cancelled."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    rotation.on_change(lambda _kind, _phase: loop.call_soon_threadsafe(wake.set))
    while True:
        due = rotation.seconds_to_next()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), SCHEDULE_POLL if due is None
                                   else min(due, SCHEDULE_POLL))
        wake.clear()
        try:
            await asyncio.to_thread(rotation.tick)  # generates keys and writes files
        except Exception:  # the next look retries; the current phase stays in force
            log.exception("automatic CA rotation: moving to the next phase failed")
            await asyncio.sleep(1.0)


def _new_rotation(mode: str, now: float, grace: dt.timedelta) -> dict[str, Any]:
    third = grace.total_seconds() / 3
    return {"mode": mode, "started": now, "grace_period": format_duration(grace),
            "schedule": {UPDATE_CLIENTS: now + third, UPDATE_SERVERS: now + 2 * third,
                         STANDBY: now + 3 * third}}


def _illegal(kind: str, current: str, target: str) -> str:
    allowed = " or ".join(NEXT[current])
    if current == STANDBY:
        return (f"the {kind} CA is not rotating: a rotation starts with --phase init "
                f"(asked for {target!r})")
    return (f"the {kind} CA is in phase {current!r}: the next phase is {allowed}, "
            f"not {target!r}")
