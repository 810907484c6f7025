"""Several cluster processes on one PostgreSQL storage sign with one set of CAs.

The CAs (private keys included) stay files in each data dir (`<data_dir>/ca`): a second
cluster process is given a copy of the first one's directory before its first start
(README "Several cluster processes"). The storage records which CA certificates are in
force (`meta.ca_set`: a digest of every kind's active and trusted certificates); a
process whose CA directory does not match is refused at start, so a forgotten or stale
copy stops with a message instead of issuing certificates the others do not trust.

A CA rotation is not coordinated between processes: the one that rotates records the new
set at each phase, and the others must be stopped, given a fresh copy and restarted —
which this check enforces at their next start.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from mwiproxy.auth.storage.base import Storage
from mwiproxy.identity.authorities import CA_KINDS, AuthoritySet

META_KEY = "ca_set"
log = logging.getLogger("mwiproxy.auth.ca_share")


class CAsDiffer(ValueError):
    """This data dir's CAs are not those the other processes on the storage use."""


def ca_digest(cas: AuthoritySet) -> str:
    """SHA-256 over each kind's active certificate and its trusted ones, in order."""
    parts = {kind: [cas[kind].cert.public_bytes(Encoding.DER).hex()]
             + [c.public_bytes(Encoding.DER).hex() for c in cas[kind].trusted_certs]
             for kind in CA_KINDS}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def check_shared(storage: Storage, cas: AuthoritySet, ca_dir: Path) -> None:
    """At start: record the CA set if none is, refuse a different one (shared storage
    only: with SQLite the data dir holds both and nothing else reads them)."""
    if not storage.remote:
        return
    mine, recorded = ca_digest(cas), storage.get_meta(META_KEY)
    if recorded is None:
        storage.set_meta(META_KEY, mine)
    elif recorded != mine:
        raise CAsDiffer(
            f"the CAs in {ca_dir} are not the ones the cluster processes on this storage "
            f"sign with (CA set {mine[:12]}, storage records {recorded[:12]}): copy the "
            "ca directory of a cluster process that runs on this storage (after a CA "
            "rotation: of the one that rotated) into this data dir")


def record(storage: Storage, cas: AuthoritySet) -> None:
    """After a rotation phase changed this process's CAs (a rotation listener: logs a
    failure rather than raising into the rotation, whose phase is already in force)."""
    if not storage.remote:
        return
    try:
        storage.set_meta(META_KEY, ca_digest(cas))
    except Exception as e:
        log.error("could not record the rotated CA set in the storage (%s): until it is "
                  "recorded (this process's next rotation phase) every cluster process "
                  "starting on this storage is refused, this one included; to record "
                  "another set, `DELETE FROM meta WHERE key = '%s'` and the next process "
                  "to start records its own", e, META_KEY)
