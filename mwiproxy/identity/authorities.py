"""The cluster's certificate authorities: created on first start, then used to sign.

Five CAs, each with one job (ECDSA P-256):
- host:      the cluster proxy's server certificate (bots and mwictl verify it);
- user:      bot and admin identities, and the database certificates issued to bots;
- db:        database servers' certificates (`mwictl auth sign --format=db`);
- db_client: the short-lived certificates engines present to real databases;
- agent:     database agents' server certificates (trusted only by the cluster proxy).

Each CA has an *active* certificate and key that sign, and a *trusted* set of
certificates peers verify against: the active one alone, or two while a rotation
(auth/ca_rotation.py) is under way. On disk (<data_dir>/ca, 0700) each key pair is
`<name>.crt` + `<name>.key` (0600); `state.json` says which names are active and
trusted per kind (absent: `<kind>` alone, the layout before rotation existed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mwiproxy.identity import oids
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


def key_fingerprint(key: PublicKey) -> str:
    """sha256 (hex) of a public key's SubjectPublicKeyInfo: which key a certificate was
    issued for, without keeping the key."""
    spki = key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


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


# (what was issued: bot, admin, agent, proxy, user, db_server, db_client; seconds)
SignObserver = Callable[[str, float], None]
_SERVER_KINDS = {"host": "proxy", "agent": "agent", "db": "db_server"}


def identity_kind(identity: Identity) -> str:
    """What a client certificate is for, as the issue metrics label it."""
    for usage, kind in ((oids.USAGE_ADMIN, "admin"), (oids.USAGE_PROXY, "proxy"),
                        (oids.USAGE_AGENT, "agent")):
        if usage in identity.usage:
            return kind
    return "bot" if identity.bot_name or oids.USAGE_BOT in identity.usage else "user"


@dataclass
class CertAuthority:
    kind: str
    cluster: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate  # the active certificate: what signs
    # what peers trust, active first; empty means the active certificate alone
    trusted: tuple[x509.Certificate, ...] = field(default=())
    # told (kind of certificate, seconds) after each signature: the issue metrics
    observer: SignObserver | None = field(default=None, compare=False, repr=False)

    @property
    def trusted_certs(self) -> tuple[x509.Certificate, ...]:
        return self.trusted or (self.cert,)

    @property
    def cert_pem(self) -> bytes:
        """The PEM bundle peers verify against: every trusted certificate of this CA (two
        during a rotation's grace period). Signing uses `key` and `cert` alone."""
        return b"".join(cert_pem(c) for c in self.trusted_certs)

    @property
    def key_id(self) -> str:
        """The active certificate's key identifier (hex): what a certificate it signed
        names as its AuthorityKeyIdentifier."""
        return x509.SubjectKeyIdentifier.from_public_key(self.cert.public_key()).digest.hex()

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
        started = time.perf_counter()
        b = self._builder(subject_for(identity), public_key, ttl).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        return self._sign(b, identity_kind(identity), started)

    def sign_server(
        self, common_name: str, hosts: list[str], public_key: PublicKey, ttl: dt.timedelta
    ) -> x509.Certificate:
        """A server certificate for the given DNS names / IP addresses (host or db CA)."""
        started = time.perf_counter()
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
        return self._sign(b, _SERVER_KINDS.get(self.kind, "user"), started)

    def sign_database_user(
        self, username: str, public_key: PublicKey, ttl: dt.timedelta
    ) -> x509.Certificate:
        """What an engine shows a real database (db_client CA): the subject is exactly
        `CN=<database user>`, as Teleport's are — MariaDB's `REQUIRE SUBJECT '/CN=alice'`
        and a MongoDB `$external` user `CN=alice` match the whole subject."""
        started = time.perf_counter()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, username)])
        b = self._builder(subject, public_key, ttl).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        return self._sign(b, "db_client", started)

    def _sign(self, builder: x509.CertificateBuilder, kind: str, started: float
              ) -> x509.Certificate:
        """Every certificate this CA issues is signed here (and observed)."""
        cert = builder.sign(self.key, hashes.SHA256())
        if self.observer is not None:
            self.observer(kind, time.perf_counter() - started)
        return cert


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


STATE_FILE = "state.json"


class AuthoritySet:
    """The five CAs of a cluster, kept under <data_dir>/ca (dir 0700, keys 0600); a kind
    missing from an older data dir is created on start.

    `set_trust` is the one way the active and trusted certificates change: it writes
    `state.json` atomically first, then drops the files no longer named, so a crash
    leaves either the old state or the new one (plus, at worst, an unused key file that
    the next change removes). `epoch` counts changes: caches built from the CAs compare
    it to know when to rebuild."""

    def __init__(self, cas: dict[str, CertAuthority], directory: Path | None = None,
                 state: dict[str, dict[str, Any]] | None = None) -> None:
        self._cas = cas
        self._dir = directory
        self._state = state if state is not None else {}
        self._mu = threading.RLock()
        self.epoch = 0
        self.observer: SignObserver | None = None  # see CertAuthority.observer

    def __getitem__(self, kind: str) -> CertAuthority:
        ca = self._cas[kind]
        ca.observer = self.observer  # a CA a rotation put in place since is observed too
        return ca

    @property
    def host_pin(self) -> str:
        """The pin of the active host CA."""
        return spki_pin(self._cas["host"].cert)

    @property
    def host_pins(self) -> list[str]:
        """The pins of every trusted host CA (two during a host CA rotation)."""
        return [spki_pin(c) for c in self._cas["host"].trusted_certs]

    def names(self, kind: str) -> tuple[str, list[str]]:
        """(active, trusted) file names of a kind's key pairs."""
        entry = self._state.get(kind) or {}
        return str(entry.get("active", kind)), list(entry.get("trusted", [kind]))

    def rotation(self, kind: str) -> dict[str, Any]:
        """What the rotation layer recorded for a kind (a copy; empty when never rotated)."""
        return dict((self._state.get(kind) or {}).get("rotation") or {})

    def generate(self, kind: str) -> str:
        """A new key pair for `kind`, written but not yet trusted; returns its name."""
        d = self._directory()
        ca = create_authority(kind, self._cas[kind].cluster)
        name = f"{kind}.{secrets.token_hex(6)}"
        write_private(d / f"{name}.key", private_key_pem(ca.key))
        (d / f"{name}.crt").write_bytes(cert_pem(ca.cert))
        return name

    def set_trust(self, kind: str, active: str, trusted: list[str],
                  rotation: dict[str, Any]) -> None:
        """Make `active` sign and `trusted` (which must hold it) be trusted, record
        `rotation` alongside, and forget the key pairs no longer named."""
        if active not in trusted:
            raise ValueError(f"{kind} CA: the active key pair must be trusted")
        d = self._directory()
        with self._mu:
            ca = _load_named(kind, d, active, trusted)
            state = {**self._state, kind: {"active": active, "trusted": list(trusted),
                                           "rotation": dict(rotation)}}
            write_private(d / STATE_FILE, json.dumps(state, indent=2).encode() + b"\n")
            self._state = state
            self._cas[kind] = ca
            self.epoch += 1
            _remove_unnamed(d, kind, set(trusted))

    def _directory(self) -> Path:
        if self._dir is None:
            raise ValueError("these CAs are not kept in a directory; they cannot rotate")
        return self._dir

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str], cluster: str) -> AuthoritySet:
        d = Path(directory)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        state: dict[str, dict[str, Any]] = {}
        if (d / STATE_FILE).exists():
            state = json.loads((d / STATE_FILE).read_text())
        cas = {}
        for kind in CA_KINDS:
            entry = state.get(kind) or {}
            active, trusted = entry.get("active", kind), entry.get("trusted", [kind])
            if (d / f"{active}.crt").exists() and (d / f"{active}.key").exists():
                cas[kind] = _load_named(kind, d, active, trusted)
                if cas[kind].cluster != cluster:
                    raise ValueError(
                        f"{d / active}.crt: CA belongs to cluster {cas[kind].cluster!r}, "
                        f"config says {cluster!r} (a data dir serves one cluster)"
                    )
                continue
            if entry:
                raise ValueError(f"{d / STATE_FILE}: the {kind} CA's key pair {active!r} is "
                                 "missing; restore the data dir from a backup")
            ca = create_authority(kind, cluster)
            write_private(d / f"{kind}.key", private_key_pem(ca.key))
            (d / f"{kind}.crt").write_bytes(ca.cert_pem)
            cas[kind] = ca
        return cls(cas, d, state)


def _load_named(kind: str, d: Path, active: str, trusted: list[str]) -> CertAuthority:
    ca = _load(kind, d / f"{active}.crt", d / f"{active}.key")
    os.chmod(d / f"{active}.key", 0o600)
    others = [x509.load_pem_x509_certificate((d / f"{n}.crt").read_bytes())
              for n in trusted if n != active]
    ca.trusted = (ca.cert, *others) if others else ()
    return ca


def _remove_unnamed(d: Path, kind: str, keep: set[str]) -> None:
    for path in d.iterdir():
        stem, _, ext = path.name.rpartition(".")
        if ext not in ("crt", "key") or stem in keep:
            continue
        if stem == kind or (stem.startswith(kind + ".") and stem[len(kind) + 1:].isalnum()):
            path.unlink(missing_ok=True)


def _load(kind: str, crt: Path, key: Path) -> CertAuthority:
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    pkey = serialization.load_pem_private_key(key.read_bytes(), password=None)
    if not isinstance(pkey, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key}: not an ECDSA key")
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return CertAuthority(kind, str(org[0].value) if org else "", pkey, cert)
