"""Certificates made at test time (no committed keys)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mwiproxy.bot.credentials import Credentials, generate_key


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TestCA:
    __test__ = False

    def __init__(self, cn: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, public_pem: bytes, cn: str, serial: int, ttl: timedelta) -> bytes:
        now = datetime.now(UTC)
        public_key = serialization.load_pem_public_key(public_pem)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(serial)
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + ttl)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)


class TestPKI:
    __test__ = False

    def __init__(self) -> None:
        self.host = TestCA("host-ca")
        self.user = TestCA("user-ca")
        self.db = TestCA("db-ca")

    def credentials(self, serial: int = 1, ttl: timedelta = timedelta(hours=1)) -> Credentials:
        key_pem, public_pem = generate_key()
        cert_pem = self.user.issue(public_pem, "bot-test", serial, ttl)
        return Credentials(key_pem, cert_pem, (self.host.pem,), (self.user.pem,), (self.db.pem,))
