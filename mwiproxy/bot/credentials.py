"""The credentials one bot output holds: a private key, its certificate and the CAs.

This is the value `bot/outputs.py` renders into files. It is pure data: the renewer
builds it from what the auth service returns, nothing here talks to the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class Credentials:
    """A key, the client certificate carrying the database route, and the cluster CAs.

    CA fields hold one PEM block per CA (a CA may have several certificates during a
    rotation); outputs concatenate them.
    """

    key_pem: bytes
    cert_pem: bytes
    host_ca_pems: tuple[bytes, ...] = ()
    user_ca_pems: tuple[bytes, ...] = ()
    db_ca_pems: tuple[bytes, ...] = ()

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def not_after(self) -> datetime:
        """When the certificate expires (timezone-aware, UTC)."""
        return self.certificate.not_valid_after_utc

    def key_matches_certificate(self) -> bool:
        """True when `key_pem` is the private half of the certificate's public key."""
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        return _spki(key.public_key()) == _spki(self.certificate.public_key())


def generate_key() -> tuple[bytes, bytes]:
    """A fresh ECDSA P-256 key: (PKCS#8 private key PEM, SubjectPublicKeyInfo PEM).

    P-256 because handshakes dominate a proxy's CPU and ECDSA signs far faster than RSA.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def public_key_pem(private_pem: bytes) -> bytes:
    """The SubjectPublicKeyInfo PEM of a stored private key (a retry asks with the same key)."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
