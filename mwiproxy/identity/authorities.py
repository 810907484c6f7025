"""The cluster's certificate authorities: created on first start, then used to sign.

Four CAs, each with one job (ECDSA P-256):
- host:      the cluster proxy's server certificate (bots and mwictl verify it);
- user:      bot and admin identities, and the database certificates issued to bots;
- db:        database servers' certificates (`mwictl auth sign --format=db`);
- db_client: the short-lived certificates engines present to real databases.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mwiproxy.identity.certs import Identity, subject_for

# agent: signs database agents' server certificates, trusted only by the cluster proxy
CA_KINDS = ("host", "user", "db", "db_client", "agent")
CA_LIFETIME = dt.timedelta(days=3650)
# Certificates start a little in the past so peers with a slightly slow clock accept them.
BACKDATE = dt.timedelta(minutes=1)

PublicKey = ec.EllipticCurvePublicKey


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(pem: bytes) -> PublicKey:
    """Load a PEM public key offered by a client; only ECDSA P-256 or RSA >= 2048 are signed."""
    key = serialization.load_pem_public_key(pem)
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise ValueError(f"unsupported curve {key.curve.name}")
        return key
    from cryptography.hazmat.primitives.asymmetric import rsa

    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key  # type: ignore[return-value]
    raise ValueError("unsupported public key type: use ECDSA P-256 or RSA >= 2048")


def spki_pin(cert: x509.Certificate) -> str:
    """The `sha256:<hex>` pin of a certificate's public key, as `tctl status` prints it."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


@dataclass
class CertAuthority:
    kind: str
    cluster: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return cert_pem(self.cert)

    def _builder(
        self, subject: x509.Name, public_key: PublicKey, ttl: dt.timedelta
    ) -> x509.CertificateBuilder:
        now = utcnow()
        not_after = min(now + ttl, self.cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False,
                    key_encipherment=True, data_encipherment=False, key_agreement=False,
                    key_cert_sign=False, crl_sign=False, encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )

    def sign_identity(
        self, identity: Identity, public_key: PublicKey, ttl: dt.timedelta
    ) -> x509.Certificate:
        """A client certificate carrying identity in its subject (user CA)."""
        b = self._builder(subject_for(identity), public_key, ttl).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        return b.sign(self.key, hashes.SHA256())

    def sign_server(
        self, common_name: str, hosts: list[str], public_key: PublicKey, ttl: dt.timedelta
    ) -> x509.Certificate:
        """A server certificate for the given DNS names / IP addresses (host or db CA)."""
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.cluster),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ])
        b = (
            self._builder(subject, public_key, ttl)
            .add_extension(_san(hosts), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        return b.sign(self.key, hashes.SHA256())

    def sign_database_user(
        self, username: str, public_key: PublicKey, ttl: dt.timedelta
    ) -> x509.Certificate:
        """What an engine shows a real database: CN is the database user (db_client CA)."""
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.cluster),
            x509.NameAttribute(NameOID.COMMON_NAME, username),
        ])
        b = self._builder(subject, public_key, ttl).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        return b.sign(self.key, hashes.SHA256())


def create_authority(kind: str, cluster: str) -> CertAuthority:
    key = generate_private_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"mwiproxy {kind} CA"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} {kind} CA"),
        x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8)),
    ])
    now = utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertAuthority(kind, cluster, key, cert)


def write_private(path: Path, data: bytes) -> None:
    """Write a secret: created 0600, fsync'd, then renamed into place."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    os.chmod(path, 0o600)


class AuthoritySet:
    """The five CAs of a cluster, kept under <data_dir>/ca (dir 0700, keys 0600); a kind
    missing from an older data dir is created on start."""

    def __init__(self, cas: dict[str, CertAuthority]) -> None:
        self._cas = cas

    def __getitem__(self, kind: str) -> CertAuthority:
        return self._cas[kind]

    @property
    def host_pin(self) -> str:
        return spki_pin(self._cas["host"].cert)

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str], cluster: str) -> AuthoritySet:
        d = Path(directory)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        cas = {}
        for kind in CA_KINDS:
            crt, key = d / f"{kind}.crt", d / f"{kind}.key"
            if crt.exists() and key.exists():
                cas[kind] = _load(kind, crt, key)
                if cas[kind].cluster != cluster:
                    raise ValueError(
                        f"{crt}: CA belongs to cluster {cas[kind].cluster!r}, "
                        f"config says {cluster!r} (a data dir serves one cluster)"
                    )
                os.chmod(key, 0o600)
                continue
            ca = create_authority(kind, cluster)
            write_private(key, private_key_pem(ca.key))
            crt.write_bytes(ca.cert_pem)
            cas[kind] = ca
        return cls(cas)


def _load(kind: str, crt: Path, key: Path) -> CertAuthority:
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    pkey = serialization.load_pem_private_key(key.read_bytes(), password=None)
    if not isinstance(pkey, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key}: not an ECDSA key")
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return CertAuthority(kind, str(org[0].value) if org else "", pkey, cert)
