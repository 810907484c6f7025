"""Cluster processes on one PostgreSQL storage must sign with one set of CAs: the first
start records it, a data dir with other CAs is refused, a rotation records the new set."""

from __future__ import annotations

import shutil

import pytest

from mwiproxy.auth import ca_share
from mwiproxy.auth.storage.postgres import PostgresStorage
from mwiproxy.auth.storage.sqlite import SQLiteStorage
from mwiproxy.identity.authorities import AuthoritySet


def test_one_set_of_cas_per_storage(tmp_path, storage_server):
    storage = PostgresStorage(storage_server().fresh())
    try:
        first = AuthoritySet.load_or_create(tmp_path / "a", "c")
        ca_share.check_shared(storage, first, tmp_path / "a")
        assert storage.get_meta(ca_share.META_KEY) == ca_share.ca_digest(first)
        shutil.copytree(tmp_path / "a", tmp_path / "copy")
        copy = AuthoritySet.load_or_create(tmp_path / "copy", "c")
        ca_share.check_shared(storage, copy, tmp_path / "copy")  # the documented copy
        other = AuthoritySet.load_or_create(tmp_path / "other", "c")
        with pytest.raises(ca_share.CAsDiffer, match="copy the ca directory") as err:
            ca_share.check_shared(storage, other, tmp_path / "other")
        assert str(tmp_path / "other") in str(err.value)
        # a rotation's init phase on the first (a new user CA trusted): recorded, the
        # old copy is now stale and refused, a fresh copy is accepted
        new = first.generate("user")
        active, trusted = first.names("user")
        first.set_trust("user", active, [*trusted, new], {"phase": "init"})
        ca_share.record(storage, first)
        with pytest.raises(ca_share.CAsDiffer):
            ca_share.check_shared(storage, copy, tmp_path / "copy")
        shutil.copytree(tmp_path / "a", tmp_path / "fresh")
        fresh = AuthoritySet.load_or_create(tmp_path / "fresh", "c")
        ca_share.check_shared(storage, fresh, tmp_path / "fresh")
    finally:
        storage.close()


def test_sqlite_storage_records_nothing(tmp_path):
    storage = SQLiteStorage(str(tmp_path / "state.db"))
    try:
        ca_share.check_shared(storage, AuthoritySet.load_or_create(tmp_path / "a", "c"),
                              tmp_path / "a")
        ca_share.check_shared(storage, AuthoritySet.load_or_create(tmp_path / "b", "c"),
                              tmp_path / "b")
        assert storage.get_meta(ca_share.META_KEY) is None
    finally:
        storage.close()
