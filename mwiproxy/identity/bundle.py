"""The credential bundle contract: the file names a bot output writes, and how to read
one consistent version of them.

Shared by the writer (`bot/outputs.py` renders these names, `bot/destinations.py`
publishes them) and every reader (the local proxy, the bot's own state), so it sits
below all of them. The file names are public API: users point their clients at them,
so they are the names Teleport's tbot writes (teleport-facts.md §2).

On disk (see `bot/destinations.py` for the guarantees)::

    <destination>/tlscert -> .bundles/current/tlscert
    <destination>/.bundles/current -> 42       the one switch point
    <destination>/.bundles/42/tlscert          a version's files never change

A reader that pins a version first (`read_bundle`) always gets a matching key and
certificate; a directory written by another tool (plain files, no `.bundles`) is read
name by name (`read_files`).
"""

from __future__ import annotations

import os

KEY = "key"
TLS_CERT = "tlscert"
HOST_CA = "teleport-host-ca.crt"
USER_CA = "teleport-user-ca.crt"
DATABASE_CA = "teleport-database-ca.crt"
IDENTITY = "identity"
WRITE_TEST = ".write-test"

TLS_FORMAT_CERT = "tls.crt"
TLS_FORMAT_KEY = "tls.key"
TLS_FORMAT_CAS = "tls.cas"
MONGO_CERT = "mongo.crt"
MONGO_CAS = "mongo.cas"
COCKROACH_DIR = "cockroach"
COCKROACH_CERT = f"{COCKROACH_DIR}/node.crt"
COCKROACH_KEY = f"{COCKROACH_DIR}/node.key"
COCKROACH_CA = f"{COCKROACH_DIR}/ca.crt"

BUNDLES_DIR = ".bundles"
CURRENT_LINK = "current"


class BundleError(Exception):
    """A bundle cannot be read or written; the message says why, for the operator."""


def read_bundle(path: str, names: list[str], attempts: int = 50) -> tuple[int, dict[str, bytes]]:
    """Read `names` from one version of the destination at `path`: (version, contents).

    Pins `.bundles/current` first; retries when a slow read races the writer pruning
    that version (the previous version is kept for one renewal interval).
    """
    bundles = os.path.join(path, BUNDLES_DIR)
    for _ in range(attempts):
        version = os.readlink(os.path.join(bundles, CURRENT_LINK))
        try:
            return int(version), {n: _read(os.path.join(bundles, version, n)) for n in names}
        except FileNotFoundError:
            continue
    raise BundleError(f"{path}: no consistent version after {attempts} attempts")


def read_files(path: str, names: list[str]) -> dict[str, bytes]:
    """`names` from the directory at `path`: one consistent version when mwibot wrote it,
    else the plain files (tbot's layout, or files put there by hand)."""
    if os.path.isdir(os.path.join(path, BUNDLES_DIR)):
        return read_bundle(path, names)[1]
    return {n: _read(os.path.join(path, n)) for n in names}


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
