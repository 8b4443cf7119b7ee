"""The aiohttp application of the REST API: the guard, the routes, and the OpenAPI document of them.

`create_app` serves one `RunControl` (so one store). With an Orchestrator in the same process, commands
go through it, so that a run it drives applies them at once, and a submitted flow that names an
executor it lacks is refused (422) instead of failing when it is driven.
"""

from __future__ import annotations

import dataclasses
import logging

import orjson
from aiohttp import web

from dagrun.api.guard import guard
from dagrun.api.openapi import openapi_document
from dagrun.api.routes import RunHandlers
from dagrun.api.stream import EventStreams
from dagrun.control import RunControl
from dagrun.orchestrator import Orchestrator

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class ApiSettings:
    """Where and how the API serves. The token is not here: it must not show in a settings repr."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0: any free port (tests)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger request bodies get 413 before they are read
    keepalive_s: float = 15.0  # a quiet event stream sends a comment line this often
    # Live event streams at once: each holds a store wait, and redis-py pools hold 100 connections.
    max_streams: int = 64
    shutdown_timeout_s: float = 5.0  # how long requests in flight may finish when the server stops

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.max_streams < 1 or self.keepalive_s <= 0 or self.shutdown_timeout_s < 0:
            raise ValueError(f"unusable API settings: {self}")


def create_app(
    control: RunControl,
    *,
    token: str,
    orchestrator: Orchestrator | None = None,
    settings: ApiSettings | None = None,
) -> web.Application:
    """The application serving `control`'s store to clients holding `token` (ValueError when empty)."""
    if not token:
        raise ValueError("the API needs a token")
    settings = settings or ApiSettings()
    streams = EventStreams(keepalive_s=settings.keepalive_s, max_streams=settings.max_streams)
    handlers = RunHandlers(control, orchestrator, streams)
    app = web.Application(
        middlewares=[guard(token, max_body_bytes=settings.max_body_bytes)],
        client_max_size=settings.max_body_bytes,  # the backstop for chunked bodies, which declare no length
    )
    routes = handlers.routes()
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    handlers.openapi_body = orjson.dumps(openapi_document(routes))

    async def end_streams(app: web.Application) -> None:
        streams.close_all()

    app.on_shutdown.append(end_streams)
    return app
