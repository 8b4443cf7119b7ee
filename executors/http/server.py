"""The worker side of the HTTP transport: HttpWorkerServer serves a ScriptWorker, one request per step.

Every request needs the token, checked by a middleware before the body is read; a declared Content-Length
over the limit is refused before reading too (aiohttp's client_max_size is the backstop for chunked
bodies). A client that disconnects (its caller gave up on the step) cancels its handler, whose cancelled
step has its sandbox process killed and replaced. The token, TLS, admission, the lobby, /health and the
drain on close are every worker server's (`dagrun.worker.server`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import web

from dagrun.errors import ExecutorError
from dagrun.serving.lobby import AUTHORIZATION
from dagrun.serving.lobby_site import start_app
from dagrun.worker.admission import Busy, Stopping
from dagrun.worker.server import WorkerServer
from executors.http.refusals import BUSY, JSON, MALFORMED, STOPPING, TOO_LARGE, UNAUTHORIZED, dumps, refusal

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 1.0  # after the drain: how long aiohttp waits for handlers before cancelling them
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpWorkerServer(WorkerServer):
    """Serves a ScriptWorker over HTTP: ``async with HttpWorkerServer(worker) as server``.

    `aclose` drains: new requests get 503 stopping, running steps may finish within `grace_s`, then the
    server closes and cancels what is left."""

    KIND, SCHEMES, PROTOCOL = "http", ("http", "https"), "http"
    _runner: web.AppRunner | None = None

    async def _listen(self) -> int:
        settings = self._worker.settings
        app = web.Application(middlewares=[self._guard], client_max_size=settings.max_message_bytes)
        app.router.add_post("/execute", self._execute)
        app.router.add_get("/health", self._health)
        # handler_cancellation: a client that disconnects (its caller gave up on the step) cancels the
        # handler, which stops the step's script; aiohttp >= 3.9 lets handlers run on by default
        self._runner, port = await start_app(
            app,
            settings.host,
            settings.port,
            lobby=self._lobby,
            log_name=f"{__name__}.http",
            ssl_context=self._ssl,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
            handler_cancellation=True,
        )
        return port

    async def _close(self) -> None:
        assert self._runner is not None  # set by `_listen`
        await self._runner.cleanup()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse before the body is read: no valid token (the connection closes), or a declared body over
        the limit. A request with the token takes its connection out of the lobby."""
        if not self._authenticate(request.headers.getall(AUTHORIZATION, []), request.transport):
            self._log_refused_token(f"{request.method} {request.path} from {request.remote}")
            return refusal(HTTPStatus.UNAUTHORIZED, UNAUTHORIZED, "missing or wrong token", close=True)
        limit = self._worker.settings.max_message_bytes
        if request.content_length is not None and request.content_length > limit:
            message = f"request body of {request.content_length} bytes is over the {limit}-byte limit"
            return refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, TOO_LARGE, message, close=True)
        return await handler(request)

    async def _execute(self, request: web.Request) -> web.Response:
        if self._worker.stopping:
            return refusal(HTTPStatus.SERVICE_UNAVAILABLE, STOPPING, "the worker is stopping")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self._worker.settings.max_message_bytes
            message = f"request body is over the {limit}-byte limit"
            return refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, TOO_LARGE, message, close=True)
        try:
            step = self._worker.decode(body)
        except ExecutorError as exc:
            logger.warning(
                "worker %s: refused a request from %s: %s", self._worker.settings.worker_id, request.remote, exc
            )
            return refusal(HTTPStatus.BAD_REQUEST, MALFORMED, str(exc))
        if not self._admission.admit():
            return refusal(HTTPStatus.SERVICE_UNAVAILABLE, BUSY, "the worker is busy; try again")
        try:
            result = await self._admission.run(step)
        except Busy:
            return refusal(HTTPStatus.SERVICE_UNAVAILABLE, BUSY, "the worker is busy; try again")
        except Stopping:
            return refusal(HTTPStatus.SERVICE_UNAVAILABLE, STOPPING, "the worker is stopping")
        finally:
            self._admission.release()
        return web.Response(body=result, content_type=JSON)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(self.health_document(), dumps=dumps)
