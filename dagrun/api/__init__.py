"""The REST API of dagrun (aiohttp): submit flows, read and control runs, stream their events.

    GET  /health                                    no token; {"status": "ok"}
    GET  /openapi.json                              the OpenAPI 3.1 document of every route
    POST /v1/runs                                   {"flow": {...}, "inputs": {...}} -> 201 {"run_id"}
    GET  /v1/runs?status=&flow=&limit=              {"runs": [...]}, newest first
    GET  /v1/runs/{id}                              the run, its steps and context
    GET  /v1/runs/{id}/outputs|errors|metrics|pending|checkpoint
    GET  /v1/runs/{id}/events?after=&limit=         {"events": [...]}
    GET  /v1/runs/{id}/events/stream                Server-Sent Events until the run ends
    POST /v1/runs/{id}/cancel|pause|resume          202 with the command
    POST /v1/runs/{id}/steps/{step}/signal          {"values": {...}} -> 202 with the command

Every route but /health needs ``Authorization: Bearer <token>``; errors are ``{"error": message}``
(400 bad request, 401, 404 no such run, 409 command does not fit, 413, 422 invalid flow with
``problems``, 503 store failed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dagrun.api.settings import ApiSettings

if TYPE_CHECKING:
    from dagrun.api.app import create_app
    from dagrun.api.server import ApiServer

__all__ = ["ApiServer", "ApiSettings", "create_app"]

_LOADED_ON_USE = {"ApiServer": "dagrun.api.server", "create_app": "dagrun.api.app"}


def __getattr__(name: str) -> Any:
    """The aiohttp-based names load on first use: `dagrun` commands other than `serve` start without aiohttp."""
    if name not in _LOADED_ON_USE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LOADED_ON_USE[name]), name)
