"""Errors the auth API returns: a code a program can test, and a message for a person."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from mwiproxy.identity.names import InvalidName

P = ParamSpec("P")
T = TypeVar("T")


class AuthError(Exception):
    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AccessDenied(AuthError):
    code = "access_denied"


class NotFound(AuthError):
    code = "not_found"


class AlreadyExists(AuthError):
    code = "already_exists"


class BadRequest(AuthError):
    code = "bad_request"


class Locked(AccessDenied):
    code = "locked"


class DeniedByLock(AccessDenied):
    """A database access a lock refuses (the API code stays access_denied, as before;
    the proxy's refusal metrics tell it apart)."""


class StaleGeneration(AccessDenied):
    """A bot certificate of a generation the bot has renewed past (the API code stays
    access_denied; the proxy's refusal metrics tell it apart)."""


ERRORS_BY_CODE: dict[str, type[AuthError]] = {
    cls.code: cls for cls in (AuthError, AccessDenied, NotFound, AlreadyExists, BadRequest, Locked)
}


def checked(check: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A `names` check at an API entry point: InvalidName becomes BadRequest, same words."""
    try:
        return check(*args, **kwargs)
    except InvalidName as e:
        raise BadRequest(str(e)) from None
