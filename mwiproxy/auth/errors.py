"""Errors the auth API returns: a code a program can test, and a message for a person."""

from __future__ import annotations


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


ERRORS_BY_CODE: dict[str, type[AuthError]] = {
    cls.code: cls for cls in (AuthError, AccessDenied, NotFound, AlreadyExists, BadRequest, Locked)
}
