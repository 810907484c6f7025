"""The single-file identity (`identity`, used by `mwictl -i` and written by the bot).

Layout, all PEM, in this order: the private key, the certificate, then the CA
certificates the holder needs to verify the cluster proxy (the host CA). It is the shape
`tsh -i` reads: one file, key first.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mwiproxy.identity.pem import split_pem


@dataclass(frozen=True)
class IdentityFile:
    key_pem: bytes
    cert_pem: bytes
    ca_pems: tuple[bytes, ...]

    def render(self) -> bytes:
        return self.key_pem + self.cert_pem + b"".join(self.ca_pems)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def parse_identity(data: bytes, source: str = "identity") -> IdentityFile:
    blocks = split_pem(data)
    keys = [b for label, b in blocks if label.endswith("PRIVATE KEY")]
    certs = [b for label, b in blocks if label == "CERTIFICATE"]
    if len(keys) != 1:
        raise ValueError(f"{source}: expected exactly one private key, found {len(keys)}")
    if not certs:
        raise ValueError(f"{source}: no certificate found")
    key = serialization.load_pem_private_key(keys[0], password=None)
    cert = x509.load_pem_x509_certificate(certs[0])
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ValueError(f"{source}: the private key does not match the certificate")
    return IdentityFile(keys[0], certs[0], tuple(certs[1:]))


def read_identity_file(path: str) -> IdentityFile:
    with open(path, "rb") as f:
        return parse_identity(f.read(), path)
