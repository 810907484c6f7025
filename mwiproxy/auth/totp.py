"""TOTP (RFC 6238 over RFC 4226's HOTP): HMAC-SHA1, 6 digits, 30 s steps, the
authenticator apps' defaults."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import urllib.parse

STEP = 30
DIGITS = 6
SECRET_BYTES = 20  # 160 bits, RFC 4226's recommendation


def new_secret() -> str:
    """A random secret in base32 without padding (what apps take by hand)."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")


def _key(secret: str) -> bytes:
    s = secret.upper().replace(" ", "")
    return base64.b32decode(s + "=" * (-len(s) % 8))


def hotp(secret: str, counter: int, digits: int = DIGITS) -> str:
    mac = hmac.new(_key(secret), struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    code = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(code % 10 ** digits).zfill(digits)


def code_at(secret: str, when: float) -> str:
    return hotp(secret, int(when) // STEP)


def verify(secret: str, code: str, when: float, *, window: int = 1,
           not_before: int = -1) -> int | None:
    """The time step `code` is valid for (one step of clock drift either way), else None.
    Steps up to `not_before` are refused: a code is good once (the caller records the
    step it returned)."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return None
    now = int(when) // STEP
    found = None
    for step in range(now - window, now + window + 1):
        # every candidate compared, in constant time
        if hmac.compare_digest(hotp(secret, step), code) and step > not_before:
            found = step
    return found


def otpauth_uri(secret: str, account: str, issuer: str) -> str:
    label = urllib.parse.quote(f"{issuer}:{account}")
    query = urllib.parse.urlencode({"secret": secret, "issuer": issuer, "algorithm": "SHA1",
                                    "digits": DIGITS, "period": STEP})
    return f"otpauth://totp/{label}?{query}"
