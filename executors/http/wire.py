"""What both sides of the HTTP transport put on the wire besides envelopes: the headers, and the
refusals as the worker writes them and the client reads them.

A refusal is JSON ``{"error": message, "code": code}`` with its HTTP status: 401 UNAUTHORIZED, 413
TOO_LARGE, 400 MALFORMED (nothing ran), 503 BUSY (no pool slot freed up in time: send it again after a
backoff), 503 STOPPING (the worker is stopping, maybe restarting) or 409 TAKEN_BACK (the caller withdrew
it before it started: nothing ran).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

JSON = "application/json"
UNAUTHORIZED, TOO_LARGE, MALFORMED, BUSY, STOPPING = "unauthorized", "too_large", "malformed", "busy", "stopping"
TAKEN_BACK = "taken_back"
REQUEST_ID = "Dagrun-Request-Id"  # the caller's id for a request, which `POST /withdraw` names
STARTED = "Dagrun-Started"  # on a result's headers sent ahead of its body: the step started (and runs on)


def refusal(status: HTTPStatus, code: str, message: str, *, close: bool = False) -> web.Response:
    """The worker's answer refusing a request; `close`: the body was not read, the connection is not reused."""
    response = web.json_response({"error": message, "code": code}, status=status, dumps=dumps)
    if close:
        response.force_close()  # the body was not read: do not reuse the connection
    return response


def error_of(payload: bytes) -> tuple[str, str]:
    """The code and message of a refusal body; tolerant, as a proxy may have answered instead."""
    try:
        body = orjson.loads(payload)
        return str(body["code"]), str(body["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "unknown", payload[:200].decode(errors="replace") or "(empty body)"


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
