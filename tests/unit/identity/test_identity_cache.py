"""A certificate's identity and names are read once per certificate (both are on every
new connection's path), never across certificates, and a refusal is never remembered
as an answer."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from mwiproxy.identity.authorities import create_authority, generate_private_key
from mwiproxy.identity.certs import Identity, identity_from_der
from mwiproxy.relay.tlsnames import certificate_names

USER_CA = create_authority("user", "c")
HOST_CA = create_authority("host", "c")
TTL = dt.timedelta(minutes=5)


def _der(user: str) -> bytes:
    cert = USER_CA.sign_identity(Identity(user=user, roles=("r",), cluster="c"),
                                 generate_private_key().public_key(), TTL)
    return cert.public_bytes(Encoding.DER)


def test_the_identity_is_parsed_once_per_certificate_and_never_shared_across_them():
    first, renewed = _der("alice"), _der("alice")
    before = identity_from_der.cache_info()
    a = identity_from_der(first)
    assert identity_from_der(first) is a  # the second connection: no parse
    assert identity_from_der.cache_info().hits == before.hits + 1
    b = identity_from_der(renewed)  # a renewed certificate: read anew
    assert b is not a and b.serial != a.serial and b.user == a.user == "alice"
    assert identity_from_der(_der("bob")).user == "bob"


def test_what_is_not_a_certificate_is_refused_every_time():
    for _ in range(2):  # a refusal is not cached as an answer
        with pytest.raises(ValueError):
            identity_from_der(b"0\x03\x02\x01\x00")
    assert identity_from_der.cache_info().currsize <= 1024


def test_server_names_are_answered_per_certificate_and_name():
    der = HOST_CA.sign_server("proxy", ["proxy.example", "127.0.0.1"],
                              generate_private_key().public_key(), TTL
                              ).public_bytes(Encoding.DER)
    assert certificate_names(der, "proxy.example") and certificate_names(der, "127.0.0.1")
    assert not certificate_names(der, "other.example")
    assert not certificate_names(None, "proxy.example")
    other = HOST_CA.sign_server("proxy", ["other.example"], generate_private_key().public_key(),
                                TTL).public_bytes(Encoding.DER)
    assert certificate_names(other, "other.example") and not certificate_names(other,
                                                                               "proxy.example")
