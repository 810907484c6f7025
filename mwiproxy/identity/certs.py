"""An identity, and its encoding to and from an X.509 certificate subject."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from mwiproxy.identity import oids


@dataclass(frozen=True)
class DatabaseRoute:
    """Which database a certificate is good for, and as whom."""

    service: str
    protocol: str
    username: str = ""
    database: str = ""


@dataclass(frozen=True)
class Identity:
    user: str
    roles: tuple[str, ...] = ()
    usage: tuple[str, ...] = ()
    traits: dict[str, list[str]] = field(default_factory=dict)
    route: DatabaseRoute | None = None
    bot_name: str = ""
    bot_instance_id: str = ""
    generation: int = 0
    renewable: bool = False
    cluster: str = ""
    expires: datetime | None = None
    not_before: datetime | None = None
    serial: int = 0
    # the certificate it was read from (DER), so it can be shown to a database agent
    cert_der: bytes = field(default=b"", repr=False, compare=False)

    @property
    def is_admin(self) -> bool:
        return oids.USAGE_ADMIN in self.usage

    @property
    def is_bot(self) -> bool:
        return bool(self.bot_name)

    def validity_problem(self, now: datetime) -> str:
        """Why the certificate this identity came from is not valid at `now` ("" if it
        is). Checked at every use, not only at the handshake: a resumed TLS session or a
        long-lived connection must not outlive the certificate."""
        if self.not_before is not None and now < self.not_before:
            return (f"the certificate of {self.user!r} is not valid before "
                    f"{self.not_before:%Y-%m-%d %H:%M:%S} UTC")
        if self.expires is not None and now >= self.expires:
            return (f"the certificate of {self.user!r} expired at "
                    f"{self.expires:%Y-%m-%d %H:%M:%S} UTC")
        return ""


def subject_for(identity: Identity) -> x509.Name:
    attrs = [x509.NameAttribute(oids.USER, identity.user)]
    attrs += [x509.NameAttribute(oids.ROLES, r) for r in identity.roles]
    attrs += [x509.NameAttribute(oids.USAGE, u) for u in identity.usage]
    if identity.cluster:
        attrs.append(x509.NameAttribute(oids.ROUTE_TO_CLUSTER, identity.cluster))
    if identity.traits:
        traits = json.dumps(identity.traits, sort_keys=True, separators=(",", ":"))
        attrs.append(x509.NameAttribute(oids.TRAITS, traits))
    if identity.route is not None:
        r = identity.route
        attrs.append(x509.NameAttribute(oids.DB_SERVICE, r.service))
        attrs.append(x509.NameAttribute(oids.DB_PROTOCOL, r.protocol))
        if r.username:
            attrs.append(x509.NameAttribute(oids.DB_USERNAME, r.username))
        if r.database:
            attrs.append(x509.NameAttribute(oids.DB_NAME, r.database))
    if identity.renewable:
        attrs.append(x509.NameAttribute(oids.RENEWABLE, "true"))
    if identity.generation:
        attrs.append(x509.NameAttribute(oids.GENERATION, str(identity.generation)))
    if identity.bot_name:
        attrs.append(x509.NameAttribute(oids.BOT_NAME, identity.bot_name))
    if identity.bot_instance_id:
        attrs.append(x509.NameAttribute(oids.BOT_INSTANCE_ID, identity.bot_instance_id))
    return x509.Name(attrs)


def _values(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in name.get_attributes_for_oid(oid)]


def _one(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    vals = _values(name, oid)
    return vals[0] if vals else ""


@functools.lru_cache(maxsize=1024)
def identity_from_der(der: bytes) -> Identity:
    """identity_from_certificate on DER, parsed once per certificate: a bot's certificate
    serves many connections, and each would otherwise cost a parse (the DER is the key,
    so a renewed certificate is read anew; a refusal, a ValueError, is not cached).
    The Identity is frozen; nothing validity-related is cached beyond what the
    certificate itself says, and every connection still checks it."""
    return identity_from_certificate(x509.load_der_x509_certificate(der))


def identity_from_certificate(cert: x509.Certificate) -> Identity:
    """Decode an identity; raises ValueError when the subject is not one of ours."""
    s = cert.subject
    user = _one(s, oids.USER)
    if not user:
        raise ValueError("certificate subject has no user (CN)")
    traits_raw = _one(s, oids.TRAITS)
    traits = json.loads(traits_raw) if traits_raw else {}
    route = None
    service = _one(s, oids.DB_SERVICE)
    if service:
        route = DatabaseRoute(
            service=service,
            protocol=_one(s, oids.DB_PROTOCOL),
            username=_one(s, oids.DB_USERNAME),
            database=_one(s, oids.DB_NAME),
        )
    gen = _one(s, oids.GENERATION)
    issuer_org = cert.issuer.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return Identity(
        user=user,
        roles=tuple(_values(s, oids.ROLES)),
        usage=tuple(_values(s, oids.USAGE)),
        traits=traits,
        route=route,
        bot_name=_one(s, oids.BOT_NAME),
        bot_instance_id=_one(s, oids.BOT_INSTANCE_ID),
        generation=int(gen) if gen else 0,
        renewable=_one(s, oids.RENEWABLE) == "true",
        cluster=str(issuer_org[0].value) if issuer_org else "",
        expires=cert.not_valid_after_utc,
        not_before=cert.not_valid_before_utc,
        serial=cert.serial_number,
        cert_der=cert.public_bytes(Encoding.DER),
    )
