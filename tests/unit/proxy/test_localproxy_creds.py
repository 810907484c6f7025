from __future__ import annotations

import datetime as dt

import pytest

from mwiproxy.bot.credentials import Credentials
from mwiproxy.bot.destinations import DirectoryDestination
from mwiproxy.bot.outputs import render_database_output
from mwiproxy.identity.authorities import (
    cert_pem,
    create_authority,
    generate_private_key,
    private_key_pem,
)
from mwiproxy.identity.certs import DatabaseRoute, Identity
from mwiproxy.localproxy.creds import (
    CredentialsError,
    DirectoryCredentials,
    TLSCredentials,
    check_usable,
)
from mwiproxy.wire.addr import Address, parse_listen

USER_CA = create_authority("user", "c")
HOST_CA = create_authority("host", "c")


def _write(path, service="example-server", ttl=dt.timedelta(minutes=5)):  # type: ignore[no-untyped-def]
    key = generate_private_key()
    ident = Identity(user="bot-x", bot_name="x",
                     route=DatabaseRoute(service, "postgres", "alice", "example-db"))
    cert = USER_CA.sign_identity(ident, key.public_key(), ttl)
    creds = Credentials(private_key_pem(key), cert_pem(cert), (HOST_CA.cert_pem,))
    DirectoryDestination(str(path)).write_bundle(render_database_output(creds))
    return cert_pem(cert)


def test_directory_credentials_reload_when_the_bot_renews(tmp_path):
    first = _write(tmp_path)
    provider = DirectoryCredentials(str(tmp_path))
    assert provider()[0] == first and provider() is provider()  # cached while unchanged
    second = _write(tmp_path)
    assert provider()[0] == second
    check_usable(TLSCredentials(*provider()), "example-server", "dir")


def test_missing_expired_or_wrong_service(tmp_path):
    with pytest.raises(CredentialsError, match="No such file"):
        DirectoryCredentials(str(tmp_path / "nothing"))()
    _write(tmp_path, ttl=dt.timedelta(seconds=-30))
    with pytest.raises(CredentialsError, match="expired at"):
        check_usable(TLSCredentials(*DirectoryCredentials(str(tmp_path))()), "", "dir")
    _write(tmp_path, service="other")
    with pytest.raises(CredentialsError, match="'other', not 'example-server'"):
        check_usable(TLSCredentials(*DirectoryCredentials(str(tmp_path))()),
                     "example-server", "dir")


@pytest.mark.parametrize("text, want", [
    ("127.0.0.1:5432", Address("tcp", "127.0.0.1", 5432)),
    ("tcp://localhost:0", Address("tcp", "localhost", 0)),
    ("unix:///run/mwi/pg.sock", Address("unix", path="/run/mwi/pg.sock")),
])
def test_listen_addresses(text, want):
    assert parse_listen(text) == want
    with pytest.raises(ValueError, match="needs an absolute path"):
        parse_listen("unix://relative.sock")
