"""The aiohttp application of the REST API: the guard, the routes, the OpenAPI document of them, and the
web dashboard under /ui (`dagrun.api.dashboard`), which signs browsers in to the same API.

`create_app` serves one `RunControl` (so one store). With an Orchestrator in the same process, the runs
it drives apply commands at once (see `local_runs`), and a submitted flow that names an executor it
lacks is refused (422) instead of failing when it is driven. The app holds the `Lobby` of
its connections under LOBBY: its guard reports requests to it, and `ApiServer` admits connections to it.
"""

from __future__ import annotations

import logging

import orjson
from aiohttp import web

from dagrun.api.dashboard import Dashboard
from dagrun.api.guard import guard
from dagrun.api.openapi import openapi_document
from dagrun.api.routes import RunHandlers
from dagrun.api.sessions import Sessions
from dagrun.api.settings import ApiSettings
from dagrun.api.stream import EventStreams
from dagrun.engine.control import RunControl
from dagrun.engine.orchestrator import Orchestrator
from dagrun.serving.lobby import Lobby

logger = logging.getLogger(__name__)

LOBBY = web.AppKey("lobby", Lobby)


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
    handlers = RunHandlers(control, orchestrator, streams, flow_limits=settings.flow_limits)
    lobby = Lobby(settings.lobby, name="api")
    sessions = Sessions()
    app = web.Application(
        middlewares=[guard(token, max_body_bytes=settings.max_body_bytes, lobby=lobby, sessions=sessions)],
        client_max_size=settings.max_body_bytes,  # the backstop for chunked bodies, which declare no length
    )
    app[LOBBY] = lobby
    routes = handlers.routes()
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    handlers.openapi_body = orjson.dumps(openapi_document(routes))
    Dashboard(token, sessions).add_routes(app)

    async def end_streams(app: web.Application) -> None:
        streams.close_all()

    app.on_shutdown.append(end_streams)
    return app
