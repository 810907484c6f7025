"""What an agent keeps in `<data_dir>/agent/` (dir 0700, files 0600, each written whole
and renamed into place):

- `identity`: its key, its user-CA identity certificate (usage `mwi:agent`) and the host
  CA — the shape `mwictl -i` reads;
- `server.crt`: its server certificate from the agent CA (same key), shown to proxies;
- `cas.json`: the cluster's CA certificates (the user CA verifies proxies and clients).

A join token works once, so the stored identity is what a restarted agent uses.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from mwiproxy.identity.authorities import write_private
from mwiproxy.identity.certs import Identity, identity_from_certificate
from mwiproxy.identity.identityfile import IdentityFile, parse_identity

STATE_DIR = "agent"
CA_KINDS = ("host", "user", "db", "db_client")


@dataclass(frozen=True)
class AgentIdentity:
    key_pem: bytes
    cert_pem: bytes
    server_cert_pem: bytes
    cas: dict[str, bytes]

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def identity(self) -> Identity:
        return identity_from_certificate(self.certificate)

    @property
    def host_id(self) -> str:
        return self.identity.user.removeprefix("agent.")

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def expires(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc

    def expired(self, now: dt.datetime | None = None) -> bool:
        return (now or dt.datetime.now(dt.UTC)) >= self.expires

    @classmethod
    def from_reply(cls, key_pem: bytes, reply: dict[str, Any]) -> AgentIdentity:
        """From an `agent_join` / `agent_renew` answer."""
        cas = {kind: str(reply["cas"][kind]).encode() for kind in CA_KINDS}
        return cls(key_pem, str(reply["cert"]).encode(), str(reply["server_cert"]).encode(),
                   cas)


def issued_by_others(ident: AgentIdentity, signers: dict[str, str]) -> bool:
    """True when the agent's certificates name an issuer other than the CA that signs
    now (`signers`: kind -> key id, from a heartbeat answer)."""
    pairs = ((ident.cert_pem, signers.get("user")), (ident.server_cert_pem, signers.get("agent")))
    return any(want and _issuer_key_id(pem) != want for pem, want in pairs)


def _issuer_key_id(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return ""
    return (aki.key_identifier or b"").hex()


def state_dir(data_dir: str | os.PathLike[str]) -> Path:
    path = Path(data_dir) / STATE_DIR
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def save(data_dir: str | os.PathLike[str], ident: AgentIdentity) -> None:
    d = state_dir(data_dir)
    write_private(d / "cas.json", json.dumps(
        {k: v.decode() for k, v in ident.cas.items()}, indent=2).encode() + b"\n")
    write_private(d / "server.crt", ident.server_cert_pem)
    # the identity last: a torn save leaves the previous identity, never a mixed one
    write_private(d / "identity", IdentityFile(
        ident.key_pem, ident.cert_pem, (ident.cas["host"],)).render())


def load(data_dir: str | os.PathLike[str]) -> AgentIdentity | None:
    """The stored identity, or None when the agent has never joined."""
    d = Path(data_dir) / STATE_DIR
    if not (d / "identity").exists():
        return None
    source = str(d / "identity")
    try:
        ident = parse_identity((d / "identity").read_bytes(), source)
        server = (d / "server.crt").read_bytes()
        cas = {k: str(v).encode() for k, v in json.loads((d / "cas.json").read_text()).items()}
    except (OSError, ValueError) as e:
        raise ValueError(f"the agent state in {d} is unreadable ({e}); remove it and "
                         "join again with a new token") from None
    if set(cas) != set(CA_KINDS):
        raise ValueError(f"{d / 'cas.json'} does not hold the cluster's four CAs")
    return AgentIdentity(ident.key_pem, ident.cert_pem, server, cas)
