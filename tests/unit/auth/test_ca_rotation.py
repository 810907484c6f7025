"""CA rotation's state machine (auth/ca_rotation.py) over real CA files: every phase of
every CA kind, rollback, the automatic schedule, refusals, and what peers are handed."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from mwiproxy.auth.ca_rotation import RotationError
from mwiproxy.config.cluster import DatabaseConfig
from mwiproxy.dbagent.link import _verify_issued_by_any
from mwiproxy.dbagent.state import AgentIdentity, issued_by_others
from mwiproxy.engines.base import LocalSigner, UpstreamTLS
from mwiproxy.identity.authorities import (
    CA_KINDS,
    AuthoritySet,
    generate_private_key,
    public_key_pem,
    spki_pin,
)
from mwiproxy.identity.certs import Identity
from mwiproxy.identity.pem import certificates
from tests._testbase.authkit import ADMIN, CLUSTER

WALK = ["init", "update_clients", "update_servers", "standby"]


def rotate(svc, kind: str, phase: str):
    return svc.call("rotate_ca", ADMIN, {"type": kind, "manual": True, "phase": phase})


def trusted_pins(svc, kind: str) -> list[str]:
    return [spki_pin(c) for c in svc.cas[kind].trusted_certs]


def signed_by_active(svc, kind: str) -> x509.Certificate:
    """A fresh certificate from the CA's active key, as its users get one."""
    key = generate_private_key().public_key()
    ca = svc.cas[kind]
    if kind == "user":
        return ca.sign_identity(Identity(user="bot-x", cluster=CLUSTER), key,
                                dt.timedelta(hours=1))
    return ca.sign_server("localhost", ["localhost"], key, dt.timedelta(hours=1))


def phases_audited(svc, kind: str) -> list[str]:
    return [e.fields["phase"] for e in svc.audit.query(types=["ca.rotate.phase"])
            if e.fields["ca_type"] == kind]


@pytest.mark.parametrize("kind", CA_KINDS)
def test_manual_rotation_walks_every_phase(svc, tmp_path, kind):
    old = svc.cas[kind].cert
    old_pin = spki_pin(old)

    rotate(svc, kind, "init")  # new CA trusted next to the old; the old still signs
    new_pin = [p for p in trusted_pins(svc, kind) if p != old_pin][0]
    assert trusted_pins(svc, kind) == [old_pin, new_pin]
    signed_by_active(svc, kind).verify_directly_issued_by(old)
    if kind != "agent":  # bundles handed to bots, agents and databases hold both
        bundle = svc.call("get_cas", None, {})[kind]
        assert [spki_pin(x509.load_pem_x509_certificate(p))
                for p in certificates(bundle.encode())] == [old_pin, new_pin]

    rotate(svc, kind, "update_clients")  # the new CA signs; both trusted
    assert spki_pin(svc.cas[kind].cert) == new_pin
    assert sorted(trusted_pins(svc, kind)) == sorted([old_pin, new_pin])
    with pytest.raises((ValueError, InvalidSignature)):
        signed_by_active(svc, kind).verify_directly_issued_by(old)

    rotate(svc, kind, "update_servers")
    assert sorted(trusted_pins(svc, kind)) == sorted([old_pin, new_pin])

    rotate(svc, kind, "standby")  # the old CA is gone, from memory and from disk
    assert trusted_pins(svc, kind) == [new_pin]
    assert phases_audited(svc, kind) == WALK
    reloaded = AuthoritySet.load_or_create(tmp_path / "ca", CLUSTER)
    assert [spki_pin(c) for c in reloaded[kind].trusted_certs] == [new_pin]
    keys = [p.name for p in (tmp_path / "ca").glob("*.key")]
    assert [k for k in keys if k.split(".")[0] == kind] == [f"{reloaded.names(kind)[0]}.key"]
    # the other kinds did not move
    for other in CA_KINDS:
        if other != kind:
            assert len(svc.cas[other].trusted_certs) == 1


@pytest.mark.parametrize("last", ["init", "update_clients", "update_servers"])
def test_rollback_restores_the_old_ca(svc, tmp_path, last):
    old_pin = spki_pin(svc.cas["user"].cert)
    for phase in WALK[:WALK.index(last) + 1]:
        rotate(svc, "user", phase)
    new_pin = [p for p in trusted_pins(svc, "user") if p != old_pin][0]

    rotate(svc, "user", "rollback")  # the old CA signs again, the new one still trusted
    assert spki_pin(svc.cas["user"].cert) == old_pin
    assert sorted(trusted_pins(svc, "user")) == sorted([old_pin, new_pin])

    rotate(svc, "user", "standby")
    assert trusted_pins(svc, "user") == [old_pin]
    reloaded = AuthoritySet.load_or_create(tmp_path / "ca", CLUSTER)
    assert spki_pin(reloaded["user"].cert) == old_pin
    assert phases_audited(svc, "user")[-2:] == ["rollback", "standby"]


@pytest.mark.parametrize(("walk", "asked", "said"), [
    ([], "update_clients", "not rotating: a rotation starts with --phase init"),
    ([], "rollback", "not rotating"),
    (["init"], "standby", "in phase 'init': the next phase is update_clients or rollback"),
    (["init"], "init", "in phase 'init'"),
    (["init", "update_clients", "update_servers", "rollback"], "update_servers",
     "in phase 'rollback': the next phase is standby"),
])
def test_illegal_transitions_are_refused_and_audited(svc, walk, asked, said):
    for phase in walk:
        rotate(svc, "host", phase)
    before = trusted_pins(svc, "host")
    with pytest.raises(RotationError, match=said):
        rotate(svc, "host", asked)
    assert trusted_pins(svc, "host") == before
    refused = svc.audit.query(types=["ca.rotate.refused"])
    assert refused and said.split(":")[0] in refused[-1].fields["reason"]


def test_bad_requests_say_what_is_allowed(svc):
    with pytest.raises(RotationError, match="unknown CA type 'ssh'"):
        svc.call("rotate_ca", ADMIN, {"type": "ssh"})
    with pytest.raises(RotationError, match="--phase needs --manual"):
        svc.call("rotate_ca", ADMIN, {"type": "host", "phase": "init"})
    with pytest.raises(RotationError, match="--manual needs --phase"):
        svc.call("rotate_ca", ADMIN, {"type": "host", "manual": True})
    rotate(svc, "host", "init")
    with pytest.raises(RotationError, match="in phase 'init'"):  # no second rotation
        svc.call("rotate_ca", ADMIN, {"type": "host", "grace_period": "1h"})


def test_only_the_admin_may_rotate(svc):
    bot = Identity(user="bot-x", cluster=CLUSTER)
    with pytest.raises(Exception, match="admin"):
        svc.call("rotate_ca", bot, {"type": "host", "manual": True, "phase": "init"})
    assert len(svc.cas["host"].trusted_certs) == 1


def test_automatic_rotation_follows_the_grace_period(svc):
    clock = svc.clock_obj
    old_pin = spki_pin(svc.cas["db_client"].cert)
    res = svc.call("rotate_ca", ADMIN, {"type": "db_client", "grace_period": "30m"})
    assert res["db_client"]["phase"] == "init" and res["db_client"]["mode"] == "auto"
    assert svc.rotation.seconds_to_next() == pytest.approx(600)
    assert svc.rotation.tick() == []
    seen = []
    for _ in range(3):
        clock.now += 600
        seen += svc.rotation.tick()
    assert seen == [("db_client", "update_clients"), ("db_client", "update_servers"),
                    ("db_client", "standby")]
    assert svc.rotation.seconds_to_next() is None
    assert trusted_pins(svc, "db_client") != [old_pin]
    assert len(trusted_pins(svc, "db_client")) == 1
    assert phases_audited(svc, "db_client") == WALK
    events = svc.audit.query(types=["ca.rotate.phase"])
    assert [(e.fields["mode"], e.fields["by"]) for e in events] == [
        ("auto", "admin"), ("auto", "auto"), ("auto", "auto"), ("auto", "auto")]


def test_a_manual_rollback_stops_an_automatic_rotation(svc):
    svc.call("rotate_ca", ADMIN, {"type": "host", "grace_period": "3h"})
    rotate(svc, "host", "rollback")
    svc.clock_obj.now += 4 * 3600
    assert svc.rotation.tick() == []
    assert svc.rotation.phase("host") == "rollback"


def test_rotation_state_survives_a_restart(svc, tmp_path):
    rotate(svc, "host", "init")
    rotate(svc, "host", "update_clients")
    reloaded = AuthoritySet.load_or_create(tmp_path / "ca", CLUSTER)
    assert reloaded.rotation("host")["phase"] == "update_clients"
    assert reloaded["host"].cert == svc.cas["host"].cert
    assert reloaded.host_pins == svc.cas.host_pins and len(reloaded.host_pins) == 2


def test_database_server_signing_hands_out_both_client_cas(svc):
    rotate(svc, "db_client", "init")
    rotate(svc, "db", "init")
    key = public_key_pem(generate_private_key().public_key()).decode()
    res = svc.call("sign_db_server", ADMIN, {"hosts": ["localhost"], "public_key": key})
    assert len(certificates(res["cas"].encode())) == 2  # server.cas: what the database trusts
    assert len(certificates(res["db_ca"].encode())) == 2


def _agent_identity(svc) -> AgentIdentity:
    token = svc.call("tokens_add", ADMIN, {"type": "db"})["token"]
    key = generate_private_key()
    reply = svc.call("agent_join", None, {"token": token, "hostname": "db1",
                                          "public_key": public_key_pem(key.public_key()).decode()})
    return AgentIdentity.from_reply(b"", reply)


@pytest.mark.parametrize("kind", ["agent", "user"])
def test_agents_learn_when_their_certificates_come_from_an_old_ca(svc, kind):
    ident = _agent_identity(svc)
    assert not issued_by_others(ident, svc.rotation.signers())
    rotate(svc, kind, "init")  # the old CA still signs: nothing to renew yet
    assert not issued_by_others(ident, svc.rotation.signers())
    rotate(svc, kind, "update_clients")
    assert issued_by_others(ident, svc.rotation.signers())


def test_agents_accept_client_certificates_from_either_user_ca(svc):
    old_cert = signed_by_active(svc, "user")
    rotate(svc, "user", "init")
    rotate(svc, "user", "update_clients")
    new_cert = signed_by_active(svc, "user")
    bundle = svc.cas["user"].cert_pem
    _verify_issued_by_any(old_cert, bundle)
    _verify_issued_by_any(new_cert, bundle)
    rotate(svc, "user", "update_servers")
    rotate(svc, "user", "standby")
    with pytest.raises((ValueError, InvalidSignature)):
        _verify_issued_by_any(old_cert, svc.cas["user"].cert_pem)


def test_engines_rebuild_their_database_contexts_on_rotation(svc):
    db = DatabaseConfig(name="pg", protocol="postgres", uri="localhost:5432")
    upstream = UpstreamTLS(db, LocalSigner(svc.cas))
    first = asyncio.run(upstream.context_for("alice"))
    assert asyncio.run(upstream.context_for("alice")) is first  # cached
    rotate(svc, "db_client", "init")
    assert asyncio.run(upstream.context_for("alice")) is not first
