"""Identity ⇄ X.509 encoding, CA creation and signing."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mwiproxy.identity import oids
from mwiproxy.identity.authorities import (
    AuthoritySet,
    create_authority,
    generate_private_key,
    load_public_key,
    public_key_pem,
    spki_pin,
)
from mwiproxy.identity.certs import DatabaseRoute, Identity, identity_from_certificate

HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def user_ca():
    return create_authority("user", "example.local")


def _verify(ca, cert):
    cert.verify_directly_issued_by(ca.cert)


def test_bot_identity_roundtrip_uses_teleport_oids(user_ca):
    ident = Identity(user="bot-example", roles=("bot-example",), usage=(oids.USAGE_BOT,),
                     bot_name="example", bot_instance_id="i-1", generation=3, renewable=True,
                     cluster="example.local", traits={"db_users": ["alice"]})
    cert = user_ca.sign_identity(ident, generate_private_key().public_key(), HOUR)
    _verify(user_ca, cert)
    back = identity_from_certificate(cert)
    assert back.user == "bot-example" and back.roles == ("bot-example",)
    assert back.generation == 3 and back.renewable and back.bot_name == "example"
    assert back.bot_instance_id == "i-1" and back.traits == {"db_users": ["alice"]}
    assert back.cluster == "example.local" and back.is_bot and not back.is_admin
    subj = cert.subject
    assert subj.get_attributes_for_oid(x509.ObjectIdentifier("1.3.9999.1.14"))[0].value == "3"
    assert subj.get_attributes_for_oid(x509.ObjectIdentifier("1.3.9999.2.18"))[0].value == "example"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku


def test_database_route_roundtrip(user_ca):
    route = DatabaseRoute("example-server", "postgres", "alice", "example-db")
    ident = Identity(user="bot-x", roles=("example-role",), route=route)
    cert = user_ca.sign_identity(ident, generate_private_key().public_key(), HOUR)
    back = identity_from_certificate(cert)
    assert back.route == route
    s = cert.subject
    for oid, val in (("1.3.9999.2.1", "example-server"), ("1.3.9999.2.2", "postgres"),
                     ("1.3.9999.2.3", "alice"), ("1.3.9999.2.4", "example-db")):
        assert s.get_attributes_for_oid(x509.ObjectIdentifier(oid))[0].value == val


def test_expiry_is_in_not_after_and_capped_by_ca(user_ca):
    cert = user_ca.sign_identity(Identity(user="u"), generate_private_key().public_key(),
                                 dt.timedelta(minutes=5))
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=4) < left <= dt.timedelta(minutes=5)
    huge = user_ca.sign_identity(Identity(user="u"), generate_private_key().public_key(),
                                 dt.timedelta(days=100000))
    assert huge.not_valid_after_utc <= user_ca.cert.not_valid_after_utc


def test_subject_without_user_is_rejected(user_ca):
    from cryptography.hazmat.primitives import hashes
    key = generate_private_key()
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]))
            .issuer_name(user_ca.cert.subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + HOUR)
            .sign(user_ca.key, hashes.SHA256()))
    with pytest.raises(ValueError, match="no user"):
        identity_from_certificate(cert)


def test_server_cert_has_sans_and_server_auth():
    host = create_authority("host", "c")
    cert = host.sign_server("localhost", ["localhost", "127.0.0.1", "::1"],
                            generate_private_key().public_key(), HOUR)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert len(san.get_values_for_type(x509.IPAddress)) == 2
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    _verify(host, cert)


def test_database_user_cert_cn_is_db_user():
    ca = create_authority("db_client", "c")
    cert = ca.sign_database_user("alice", generate_private_key().public_key(), HOUR)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    # nothing else in the subject: databases match it whole (REQUIRE SUBJECT '/CN=alice')
    assert cert.subject.rfc4514_string() == "CN=alice"


def test_authority_set_persists_with_private_modes(tmp_path):
    d = tmp_path / "ca"
    first = AuthoritySet.load_or_create(d, "example.local")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for kind in ("host", "user", "db", "db_client"):
        assert stat.S_IMODE(os.stat(d / f"{kind}.key").st_mode) == 0o600
        k = first[kind].cert.public_key()
        assert k.curve.name == "secp256r1"  # type: ignore[union-attr]
    again = AuthoritySet.load_or_create(d, "example.local")
    assert again.host_pin == first.host_pin and again.host_pin.startswith("sha256:")
    assert len(again.host_pin) == len("sha256:") + 64
    with pytest.raises(ValueError, match="belongs to cluster"):
        AuthoritySet.load_or_create(d, "other.cluster")


def test_pin_is_sha256_of_spki():
    ca = create_authority("host", "c")
    import hashlib

    from cryptography.hazmat.primitives import serialization
    der = ca.cert.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    assert spki_pin(ca.cert) == "sha256:" + hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize("bad", [b"", b"garbage", b"-----BEGIN PUBLIC KEY-----\nAAA\n-----END PUBLIC KEY-----\n"])
def test_bad_public_keys_are_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        load_public_key(bad)


def test_weak_rsa_key_refused():
    from cryptography.hazmat.primitives.asymmetric import rsa
    k = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    from cryptography.hazmat.primitives import serialization
    pem = k.public_key().public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError):
        load_public_key(pem)
    assert load_public_key(public_key_pem(generate_private_key().public_key()))
