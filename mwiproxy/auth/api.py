"""Serves the auth API on one accepted connection (after the proxy routed it by ALPN)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mwiproxy.auth.errors import AuthError
from mwiproxy.auth.service import AuthService, Caller
from mwiproxy.auth.storage.base import StorageUnavailable
from mwiproxy.wire.frames import FrameError, encode, read_frame

log = logging.getLogger("mwiproxy.auth")

IDLE_TIMEOUT = 300.0
# Handlers run here, not on the event loop that relays every session: parsing a role file
# (up to 1 MiB of YAML), RBAC over every database the agents serve, signing. AuthService
# is safe to call from threads: storage serializes on its lock (SQLite opened with
# check_same_thread=False), the agent registry, grants and CA state have their own locks,
# the parsed-role cache is a dict used with single GIL-atomic operations, and listeners
# that reach the loop (locks, CA rotation) go through call_soon_threadsafe. A few workers
# keep one slow request from queueing the others; a connection's requests stay in order.
API_WORKERS = 4
_workers = ThreadPoolExecutor(max_workers=API_WORKERS, thread_name_prefix="mwi-auth-api")
# the first request must come sooner: until then the caller may be anyone
# (proxy.first_message_timeout)
FIRST_FRAME_TIMEOUT = 10.0


def _reply(msg_id: Any, method: str, service: AuthService, caller: Caller,
           params: Any, remote: str) -> dict[str, Any]:
    if not isinstance(params, dict):
        return {"id": msg_id, "error": {"code": "bad_request", "message": "params must be an object"}}
    try:
        return {"id": msg_id, "result": service.call(method, caller, params, remote)}
    except AuthError as e:
        return {"id": msg_id, "error": {"code": e.code, "message": e.message}}
    except StorageUnavailable as e:  # PostgreSQL storage out of reach: no bug, say so
        log.error("auth API method %s failed: %s", method, e)
        return {"id": msg_id, "error": {"code": "unavailable", "message": str(e)}}
    except Exception as e:  # a bug must not take the server down; say so and log it
        log.exception("auth API method %s failed", method)
        return {"id": msg_id, "error": {"code": "internal", "message": f"internal error: {e}"}}


async def serve_connection(
    service: AuthService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    caller: Caller, remote: str, first_frame_timeout: float = FIRST_FRAME_TIMEOUT,
) -> None:
    timeout = first_frame_timeout
    try:
        while True:
            try:
                msg = await asyncio.wait_for(read_frame(reader), timeout)
            except FrameError as e:
                writer.write(encode({"id": None, "error": {"code": "bad_request",
                                                           "message": str(e)}}))
                break
            if msg is None:
                break
            timeout = IDLE_TIMEOUT
            method = msg.get("method")
            if not isinstance(method, str):
                reply = {"id": msg.get("id"),
                         "error": {"code": "bad_request", "message": "method missing"}}
            else:
                reply = await asyncio.get_running_loop().run_in_executor(
                    _workers, _reply, msg.get("id"), method, service, caller,
                    msg.get("params", {}), remote)
            try:
                frame = encode(reply)
            except FrameError as e:  # a reply too large for a frame: say so, stay up
                frame = encode({"id": reply.get("id"),
                                "error": {"code": "too_large", "message": str(e)}})
            writer.write(frame)
            await writer.drain()
    except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
