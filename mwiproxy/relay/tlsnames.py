"""Does a (chain-verified) certificate name the host we dialed? The native TLS contexts
verify the chain only; callers that dial by name check the name with this."""

from __future__ import annotations

import functools
import ipaddress

from cryptography import x509


@functools.lru_cache(maxsize=256)
def certificate_names(der: bytes | None, name: str) -> bool:
    """True if the certificate's subjectAltName lists `name` (a DNS name, one leading
    wildcard label allowed, or an IP address). Answered once per (certificate, name):
    each connection a local proxy dials shows it the same cluster certificate."""
    if not der:
        return False
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(name) in san.get_values_for_type(x509.IPAddress)
    except ValueError:
        pass
    return any(_dns_match(p, name) for p in san.get_values_for_type(x509.DNSName))


def _dns_match(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name
