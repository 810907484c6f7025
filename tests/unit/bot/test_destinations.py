from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from mwiproxy.bot import destinations
from mwiproxy.bot.credentials import Credentials
from mwiproxy.bot.destinations import DestinationError, DirectoryDestination
from mwiproxy.bot.outputs import render_database_output
from mwiproxy.identity.bundle import read_bundle

from ._pki import TestPKI

ROTATIONS = 200


@pytest.fixture(scope="module")
def bundles() -> list[Credentials]:
    pki = TestPKI()
    return [pki.credentials(serial=i + 1) for i in range(ROTATIONS + 1)]


@pytest.fixture
def fast_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


class Reader(threading.Thread):
    """Reads `key` then `tlscert` by their published names until stopped."""

    def __init__(self, root: Path, versions: dict[bytes, int]) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.versions = versions
        self.stop = threading.Event()
        self.reads = self.straddles = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.read_once()
            except Exception as e:  # surfaced by the test
                self.errors.append(repr(e))
                return

    def read_once(self) -> None:
        key = (self.root / "key").read_bytes()
        cert = (self.root / "tlscert").read_bytes()
        key_version = self.versions[key]  # KeyError = partial or unknown file
        cert_version = x509.load_pem_x509_certificate(cert).serial_number - 1
        self.reads += 1
        if key_version == cert_version:
            return
        if key_version > cert_version:
            self.errors.append(f"newer key {key_version} with older cert {cert_version}")
        # Straddled the switch: the re-read of key shows it moved (seqlock check).
        if (self.root / "key").read_bytes() == key:
            self.errors.append(f"mismatch without a switch: {key_version} != {cert_version}")
        self.straddles += 1


def test_concurrent_reader_never_sees_mismatch_or_partial_file(
    tmp_path: Path, bundles: list[Credentials], fast_switching: None
) -> None:
    root = tmp_path / "out"
    dest = DirectoryDestination(str(root), symlinks="secure")
    dest.write_bundle(render_database_output(bundles[0]))
    reader = Reader(root, {c.key_pem: i for i, c in enumerate(bundles)})
    pinned = PinnedReader(str(root), {c.key_pem: c.cert_pem for c in bundles})
    reader.start()
    pinned.start()
    for creds in bundles[1:]:
        dest.write_bundle(render_database_output(creds))
    reader.stop.set()
    pinned.stop.set()
    reader.join(10)
    pinned.join(10)
    assert reader.errors == [] and pinned.errors == []
    assert reader.reads > 0 and pinned.reads > 0
    assert dest.current_version() == ROTATIONS + 1


class PinnedReader(threading.Thread):
    """Reads through read_bundle (guarantee 3): every pair must match, no exceptions."""

    def __init__(self, root: str, pairs: dict[bytes, bytes]) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.pairs = pairs
        self.stop = threading.Event()
        self.reads = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                _, files = read_bundle(self.root, ["key", "tlscert", "identity"])
            except Exception as e:
                self.errors.append(repr(e))
                return
            if self.pairs.get(files["key"]) != files["tlscert"]:
                self.errors.append("pinned read returned a mismatched pair")
            if not files["identity"].startswith(files["key"] + files["tlscert"]):
                self.errors.append("identity file does not match key and tlscert")
            self.reads += 1


def test_previous_version_kept_and_older_pruned(tmp_path: Path, bundles: list[Credentials]) -> None:
    dest = DirectoryDestination(str(tmp_path))
    for creds in bundles[:5]:
        version = dest.write_bundle(render_database_output(creds))
    entries = set(os.listdir(tmp_path / ".bundles"))
    assert entries == {"current", ".lock", str(version), str(version - 1)}
    assert read_bundle(str(tmp_path), ["key"]) == (5, {"key": bundles[4].key_pem})


def test_format_change_removes_dropped_names(tmp_path: Path, bundles: list[Credentials]) -> None:
    dest = DirectoryDestination(str(tmp_path))
    dest.write_bundle(render_database_output(bundles[0], "cockroach"))
    assert (tmp_path / "cockroach" / "node.key").read_bytes() == bundles[0].key_pem
    dest.write_bundle(render_database_output(bundles[1], ""))
    assert not os.path.lexists(tmp_path / "cockroach" / "node.key")
    assert (tmp_path / "key").read_bytes() == bundles[1].key_pem


def test_existing_plain_files_are_replaced(tmp_path: Path, bundles: list[Credentials]) -> None:
    (tmp_path / "key").write_bytes(b"left by tbot")
    (tmp_path / "tlscert").write_bytes(b"left by tbot")
    DirectoryDestination(str(tmp_path)).write_bundle(render_database_output(bundles[0]))
    assert (tmp_path / "key").read_bytes() == bundles[0].key_pem
    assert os.readlink(tmp_path / "tlscert") == ".bundles/current/tlscert"


def test_foreign_link_at_a_published_name_is_not_written_through(
    tmp_path: Path, bundles: list[Credentials]
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "key").symlink_to(victim)
    (out / ".write-test").symlink_to(victim)
    DirectoryDestination(str(out), symlinks="insecure").write_bundle(
        render_database_output(bundles[0])
    )
    assert victim.read_bytes() == b"precious"
    assert (out / "key").read_bytes() == bundles[0].key_pem
    assert not (out / ".write-test").is_symlink()


def test_stale_temporary_bundles_are_cleaned(tmp_path: Path, bundles: list[Credentials]) -> None:
    stale = tmp_path / ".bundles" / ".tmp-7-deadbeef"
    stale.mkdir(parents=True)
    (stale / "key").write_bytes(b"half")
    DirectoryDestination(str(tmp_path)).write_bundle(render_database_output(bundles[0]))
    assert not stale.exists()


@pytest.mark.parametrize("name", ["", "../x", "/abs", "a//b", ".bundles/x", ".write-test", "a/./b"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid output file name"):
        DirectoryDestination(str(tmp_path)).write_bundle({name: b"x"})


def test_unknown_symlink_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="symlinks"):
        DirectoryDestination("/tmp/x", symlinks="sometimes")


def test_directory_in_the_way_is_reported(tmp_path: Path) -> None:
    (tmp_path / "key").mkdir()
    with pytest.raises(DestinationError, match="cannot publish 'key'"):
        DirectoryDestination(str(tmp_path)).write_bundle({"key": b"k"})


# --- symlink policies --------------------------------------------------------------------


@pytest.fixture
def linked(tmp_path: Path) -> Path:
    """tmp/real is a directory, tmp/link -> real."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    return tmp_path


@pytest.mark.parametrize("policy", ["secure", "try-secure"])
@pytest.mark.parametrize("sub", ["link", "link/out"])
def test_secure_refuses_symlink_in_path(linked: Path, policy: str, sub: str) -> None:
    dest = DirectoryDestination(str(linked / sub), symlinks=policy)
    with pytest.raises(DestinationError, match=f"{linked / 'link'} is a symlink"):
        dest.write_bundle({"key": b"k"})
    assert os.listdir(linked / "real") == []


def test_insecure_follows_symlinks(linked: Path) -> None:
    DirectoryDestination(str(linked / "link" / "out"), symlinks="insecure").write_bundle(
        {"key": b"k"}
    )
    assert (linked / "real" / "out" / "key").read_bytes() == b"k"


def test_secure_creates_missing_directories(tmp_path: Path) -> None:
    dest = DirectoryDestination(str(tmp_path / "a" / "b"), symlinks="secure")
    dest.write_bundle({"cockroach/node.key": b"k"})
    dest.write_bundle({"cockroach/node.key": b"k2"})  # our own links work under secure
    assert (tmp_path / "a" / "b" / "cockroach" / "node.key").read_bytes() == b"k2"


def test_symlinked_subdirectory_inside_destination_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "cockroach").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DestinationError, match="'cockroach' inside the destination"):
        DirectoryDestination(str(out), symlinks="insecure").write_bundle(
            {"cockroach/node.key": b"k"}
        )


def test_try_secure_falls_back_with_warning(
    linked: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(destinations, "_nofollow_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="mwiproxy.bot.destinations"):
        DirectoryDestination(str(linked / "link"), symlinks="try-secure").write_bundle(
            {"key": b"k"}
        )
    assert "cannot refuse symlinks" in caplog.text
    assert (linked / "real" / "key").read_bytes() == b"k"
    with pytest.raises(DestinationError, match="not possible on this platform"):
        DirectoryDestination(str(linked / "link"), symlinks="secure").write_bundle({"key": b"k"})
