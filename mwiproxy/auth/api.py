"""Serves the auth API on one accepted connection (after the proxy routed it by ALPN)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mwiproxy.auth.errors import AuthError
from mwiproxy.auth.service import AuthService, Caller
from mwiproxy.wire.frames import FrameError, encode, read_frame

log = logging.getLogger("mwiproxy.auth")

IDLE_TIMEOUT = 300.0


def _reply(msg_id: Any, method: str, service: AuthService, caller: Caller,
           params: Any, remote: str) -> dict[str, Any]:
    if not isinstance(params, dict):
        return {"id": msg_id, "error": {"code": "bad_request", "message": "params must be an object"}}
    try:
        return {"id": msg_id, "result": service.call(method, caller, params, remote)}
    except AuthError as e:
        return {"id": msg_id, "error": {"code": e.code, "message": e.message}}
    except Exception as e:  # a bug must not take the server down; say so and log it
        log.exception("auth API method %s failed", method)
        return {"id": msg_id, "error": {"code": "internal", "message": f"internal error: {e}"}}


async def serve_connection(
    service: AuthService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    caller: Caller, remote: str,
) -> None:
    try:
        while True:
            try:
                msg = await asyncio.wait_for(read_frame(reader), IDLE_TIMEOUT)
            except FrameError as e:
                writer.write(encode({"id": None, "error": {"code": "bad_request",
                                                           "message": str(e)}}))
                break
            if msg is None:
                break
            method = msg.get("method")
            if not isinstance(method, str):
                reply = {"id": msg.get("id"),
                         "error": {"code": "bad_request", "message": "method missing"}}
            else:
                reply = _reply(msg.get("id"), method, service, caller, msg.get("params", {}),
                               remote)
            writer.write(encode(reply))
            await writer.drain()
    except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
