"""The audit log's hash chain: how an event is encoded and linked, and the walk that finds
the first place where the stored log stops being the log mwiproxy wrote.

Each event stores `hash = sha256(prev_hash || canonical(id, time, type, fields))`, where
`prev_hash` is the previous event's hash (GENESIS for the first event, and for the first
of the events written before the chain existed, which are chained when a database is
migrated). The newest (id, hash) is also kept apart from the rows (the "head"), so a
deleted last event shows as a head the rows no longer reach.

The limit: everything lives in one file. Someone who can write it and recomputes every
hash and the head leaves a chain that verifies; only a head exported earlier
(`mwictl audit verify --head`, kept somewhere else) exposes that rewrite.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mwiproxy._native import canonical_fields, chain_rows
from mwiproxy._native import link_hash as _link_hash
from mwiproxy._native.auditenc_py import ChainRow
from mwiproxy.auth.storage.base import (
    AuditHead,
    AuditTail,
    ChainedAuditEvent,
    EncodedFields,
    Fields,
)

# the prev_hash of the first event: 32 zero bytes
GENESIS = "0" * 64
# written by the store (not by AuditLog): the chain was started over older events
CHAIN_MIGRATED = "audit.chain_migrated"
# written at cluster start when the walk finds a break
CHAIN_BROKEN = "audit.chain_broken"
# breaks listed in one report (a rewritten log breaks at nearly every event)
MAX_BREAKS = 100


def session_of(fields: Fields) -> str | None:
    """The value of the `session` column (an unhashed index of the
    backends, for reading one database session) for an event's fields."""
    if type(fields) is EncodedFields:
        return fields.session
    value = fields.get("session") if isinstance(fields, dict) else None
    return value if isinstance(value, str) else None


def fields_text(fields: Fields) -> str:
    """The stored form of an event's fields: canonical JSON (sorted keys, no spaces,
    ASCII only). Encoded twice so that keys that are not strings sort as the text
    they become. A value JSON has no form for is stored as its text (str); fields that
    cannot be encoded at all (a cycle, a key that is not text) as their repr, so one odd
    event never stops the log.

    Fields that are already plain JSON (str keys; str, int, float, bool, None, lists,
    tuples and dicts of them; every event the proxies emit) give the same text encoded
    once, natively (_native.canonical_fields): the fast path, per event on the audit
    writer's thread. EncodedFields: their text, as given."""
    if type(fields) is EncodedFields:
        return fields.text
    text = canonical_fields(fields)
    if text is not None:
        return text
    try:
        loose = json.loads(json.dumps(fields, default=str))
    except (TypeError, ValueError) as e:
        loose = {"unencodable_fields": repr(fields)[:8192], "error": str(e)}
    return _CANONICAL.encode(loose)


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def link_hash(prev_hash: str, event_id: int, time: float, type: str, text: str) -> str:
    """sha256 over the previous hash (32 raw bytes) and the event's parts, each
    length-prefixed, so no two different events encode to the same bytes. `text` is the
    fields exactly as stored. (_native.link_hash; a batch's links: link_rows.)"""
    return _link_hash(prev_hash, event_id, time, type, text)


def link_rows(prev_hash: str, top: int,
              events: list[tuple[float, str, str, str | None]]) -> list[ChainRow]:
    """The rows (id, time, type, text, prev_hash, hash, session) of `events` (time, type,
    fields text, session) linked in order onto the event `top` whose hash is
    `prev_hash`: link_hash for each, in one native call per batch."""
    return chain_rows(prev_hash, top, events)


def parse_head(text: str) -> AuditHead:
    """`HASH@ID`, as `mwictl audit verify --head` prints it."""
    hash_, sep, event_id = text.strip().partition("@")
    if not sep or not event_id.isdigit() or len(hash_) != 64:
        raise ValueError(f"{text!r} is not a head: expected HASH@ID (64 hex digits, an id)")
    try:
        bytes.fromhex(hash_)
    except ValueError:
        raise ValueError(f"{text!r} is not a head: the hash is not hex") from None
    return AuditHead(int(event_id), hash_.lower())


@dataclass
class ChainBreak:
    event_id: int
    reason: str  # edited | deleted | inserted | truncated | appended | head_missing | anchor
    detail: str
    acknowledged_by: int | None = None  # the chain_broken event that reported it

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.event_id, "reason": self.reason, "detail": self.detail,
                "acknowledged_by": self.acknowledged_by}


@dataclass
class ChainReport:
    events: int = 0
    head: AuditHead = field(default_factory=lambda: AuditHead(0, GENESIS))
    breaks: list[ChainBreak] = field(default_factory=list)
    # chain_broken events in the log: (event id, the broken ids it reported)
    reported: list[tuple[int, list[int]]] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """No break now, and none reported at an earlier start: a break found then may
        have left no trace in the rows since (a deleted head), but the report stays."""
        return not self.breaks and not self.reported

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "head": f"{self.head.hash}@{self.head.event_id}",
                "intact": self.intact, "breaks": [b.as_dict() for b in self.breaks],
                "reported": [{"event": e, "ids": ids} for e, ids in self.reported]}


def _broken_ids(text: str) -> list[int]:
    try:
        ids = json.loads(text).get("broken_ids", [])
        return [int(i) for i in ids]
    except (ValueError, TypeError, AttributeError):
        return []  # an edited report: its own hash shows that


class _Walk:
    def __init__(self, anchor: AuditHead | None) -> None:
        self.report = ChainReport()
        self.last: ChainedAuditEvent | None = None
        self.anchor = anchor
        self.anchor_hash: str | None = None  # the stored hash of the anchor's event
        self.sound_reports: set[int] = set()  # chain_broken events whose own hash holds

    def add(self, event_id: int, reason: str, detail: str) -> None:
        if len(self.report.breaks) < MAX_BREAKS:
            self.report.breaks.append(ChainBreak(event_id, reason, detail))

    def step(self, ev: ChainedAuditEvent) -> None:
        self.report.events += 1
        prev, self.last = self.last, ev
        if self.anchor is not None and ev.event_id == self.anchor.event_id:
            self.anchor_hash = ev.hash
        if ev.type == CHAIN_BROKEN:
            self.report.reported.append((ev.event_id, _broken_ids(ev.text)))
        if not ev.hash or not ev.prev_hash:
            self.add(ev.event_id, "edited", "the event has no hash (written outside the chain)")
            return
        if link_hash(ev.prev_hash, ev.event_id, ev.time, ev.type, ev.text) != ev.hash:
            self.add(ev.event_id, "edited", "the event does not match its hash")
        elif ev.type == CHAIN_BROKEN:
            self.sound_reports.add(ev.event_id)
        prev_id = prev.event_id if prev else 0
        if ev.event_id != prev_id + 1:
            gone = f"{prev_id + 1}" if ev.event_id == prev_id + 2 else \
                f"{prev_id + 1}..{ev.event_id - 1}"
            self.add(prev_id + 1, "deleted", f"event {gone} is missing")
        elif ev.prev_hash != (prev.hash if prev else GENESIS):
            self.add(ev.event_id, "inserted",
                     f"prev_hash does not match event {prev_id}: events were inserted, "
                     "replaced or reordered")

    def finish(self, tail: AuditTail) -> ChainReport:
        last = self.last
        self.report.head = AuditHead(last.event_id, last.hash or "") if last else \
            AuditHead(0, GENESIS)
        self._check_tail(tail)
        if self.anchor is not None:
            self._check_anchor(self.anchor)
        self._acknowledge()
        return self.report

    def _check_tail(self, tail: AuditTail) -> None:
        last_id, head = self.report.head.event_id, tail.head
        if head is None:
            if last_id:
                self.add(last_id, "head_missing", "the recorded head is gone: events may "
                         "have been deleted from the end")
        elif head.event_id > last_id:
            self.add(last_id + 1, "truncated",
                     f"the recorded head is event {head.event_id}, the log ends at {last_id}")
        elif head.event_id < last_id:
            self.add(head.event_id + 1, "appended",
                     f"events after the recorded head {head.event_id} were written outside "
                     "mwiproxy")
        elif head.hash != self.report.head.hash:
            self.add(last_id, "edited", "the last event differs from the recorded head")
        top = max(head.event_id if head else 0, last_id)
        if tail.highest_id > top:
            self.add(top + 1, "truncated",
                     f"ids up to {tail.highest_id} were issued, the log ends at {last_id}")

    def _check_anchor(self, anchor: AuditHead) -> None:
        end = self.report.head.event_id
        if anchor.event_id > end:
            self.add(end + 1, "anchor", f"the exported head is event {anchor.event_id}, "
                     f"the log ends at {end}: events were deleted from the end")
        elif self.anchor_hash != anchor.hash:
            self.add(anchor.event_id, "anchor", f"event {anchor.event_id} differs from the "
                     "exported head: the log was rewritten since the head was exported")

    def _acknowledge(self) -> None:
        """Mark breaks a chain_broken event already reported. That event chains onto the
        recorded head, so it may itself show as the wrong link right after forged events.
        Acknowledging changes no verdict: it only tells old breaks from new ones."""
        for b in self.report.breaks:
            for event_id, ids in self.report.reported:
                if event_id not in self.sound_reports:
                    continue
                if b.event_id in ids or (b.event_id == event_id and b.reason == "inserted"):
                    b.acknowledged_by = event_id
                    break


def verify_chain(tail: AuditTail, events: Iterable[ChainedAuditEvent],
                 anchor: AuditHead | None = None) -> ChainReport:
    """Walk every event in id order and list where the chain breaks. A break does not
    stop the walk: it goes on from the stored hash, so later breaks are found too."""
    walk = _Walk(anchor)
    for ev in events:
        walk.step(ev)
    return walk.finish(tail)
