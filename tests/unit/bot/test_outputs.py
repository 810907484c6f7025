from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from mwiproxy.bot import outputs
from mwiproxy.bot.credentials import Credentials, generate_key
from mwiproxy.bot.destinations import DirectoryDestination
from mwiproxy.identity.identityfile import parse_identity
from mwiproxy.identity.pem import certificates, split_pem

from ._pki import TestPKI

COMMON = {
    "key",
    "tlscert",
    "teleport-host-ca.crt",
    "teleport-user-ca.crt",
    "teleport-database-ca.crt",
    "identity",
}
EXPECTED = {
    "": COMMON,
    "tls": COMMON | {"tls.crt", "tls.key", "tls.cas"},
    "mongo": COMMON | {"mongo.crt", "mongo.cas"},
    "cockroach": COMMON | {"cockroach/node.crt", "cockroach/node.key", "cockroach/ca.crt"},
}


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="module")
def creds(pki: TestPKI) -> Credentials:
    return pki.credentials()


def published(root: Path) -> set[str]:
    """Names a client sees: everything outside .bundles, minus the probe and directories."""
    names = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".bundles"]
        for f in filenames:
            names.add(str(Path(dirpath, f).relative_to(root)))
    return names - {".write-test"}


def test_credentials_properties(creds: Credentials) -> None:
    assert creds.key_matches_certificate()
    assert isinstance(creds.certificate, x509.Certificate)
    remaining = creds.not_after - creds.certificate.not_valid_before_utc
    assert timedelta(minutes=60) < remaining <= timedelta(minutes=61)


def test_generate_key_is_p256_pkcs8() -> None:
    private_pem, public_pem = generate_key()
    assert private_pem.startswith(b"-----BEGIN PRIVATE" b" KEY-----")  # no key-shaped literal
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_database_output_file_names(creds: Credentials, fmt: str) -> None:
    assert set(outputs.render_database_output(creds, fmt)) == EXPECTED[fmt]


def test_unknown_format_is_refused(creds: Credentials) -> None:
    with pytest.raises(ValueError, match="unknown database output format 'pem'"):
        outputs.render_database_output(creds, "pem")


def test_identity_output_file_names(creds: Credentials) -> None:
    assert set(outputs.render_identity_output(creds)) == COMMON


def test_contents(creds: Credentials, pki: TestPKI) -> None:
    files = outputs.render_database_output(creds, "tls")
    assert files["tls.key"] == files["key"] == creds.key_pem
    assert files["tls.crt"] == files["tlscert"] == creds.cert_pem
    assert files["tls.cas"] == files["teleport-host-ca.crt"] == pki.host.pem
    assert files["teleport-user-ca.crt"] == pki.user.pem
    assert files["teleport-database-ca.crt"] == pki.db.pem
    ident = parse_identity(files["identity"])
    assert (ident.key_pem, ident.cert_pem, ident.ca_pems) == (
        creds.key_pem,
        creds.cert_pem,
        (pki.host.pem,),
    )


def test_mongo_and_cockroach_contents(creds: Credentials, pki: TestPKI) -> None:
    mongo = outputs.render_database_output(creds, "mongo")
    labels = [label for label, _ in split_pem(mongo["mongo.crt"])]
    assert labels == ["CERTIFICATE", "PRIVATE KEY"]
    assert mongo["mongo.cas"] == pki.db.pem
    roach = outputs.render_database_output(creds, "cockroach")
    assert roach["cockroach/node.crt"] == creds.cert_pem
    assert roach["cockroach/node.key"] == creds.key_pem
    # the Database CA (a node's), then the Host CA (the cluster proxy's, non-tunnel mode)
    assert certificates(roach["cockroach/ca.crt"]) == [pki.db.pem, pki.host.pem]


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_written_names_and_modes(tmp_path: Path, creds: Credentials, fmt: str) -> None:
    root = tmp_path / "out"
    DirectoryDestination(str(root)).write_bundle(outputs.render_database_output(creds, fmt))
    assert published(root) == EXPECTED[fmt]
    assert (root / ".write-test").read_bytes() == b""
    assert_modes(root)
    files = outputs.render_database_output(creds, fmt)
    for name, content in files.items():
        assert (root / name).read_bytes() == content


def assert_modes(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
        for f in filenames:
            assert stat.S_IMODE(os.stat(Path(dirpath, f)).st_mode) == 0o600, f


def test_modes_are_reapplied_on_every_write(tmp_path: Path, pki: TestPKI) -> None:
    root = tmp_path / "out"
    dest = DirectoryDestination(str(root))
    dest.write_bundle(outputs.render_database_output(pki.credentials(), "cockroach"))
    os.chmod(root, 0o755)
    os.chmod(root / "cockroach", 0o755)
    os.chmod(root / ".bundles", 0o777)
    os.chmod(root / "key", 0o644)  # follows the link to the bundle's file
    os.chmod(root / ".write-test", 0o666)
    dest.write_bundle(outputs.render_database_output(pki.credentials(), "cockroach"))
    assert_modes(root)


def test_formats_match_config_literal() -> None:
    import typing

    from mwiproxy.config.bot import DatabaseService

    hint = typing.get_type_hints(DatabaseService)["format"]
    assert typing.get_args(hint) == outputs.DATABASE_FORMATS
