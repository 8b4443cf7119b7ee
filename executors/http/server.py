"""The worker side of the HTTP transport: HttpWorkerServer serves a ScriptWorker, one request per step.

Every request needs the token, checked by a middleware before the body is read; a declared Content-Length
over the limit is refused before reading too (aiohttp's client_max_size is the backstop for chunked
bodies). A client that disconnects (its caller gave up on the step) cancels its handler, whose cancelled
step has its sandbox process killed and replaced. A step still running a while after it started gets
its response headers sent ahead (`wire.STARTED`: its caller learns it started), its result after; one
its caller takes back (`POST /withdraw`, `withdrawals`) before it started is answered 409 taken_back.
The token, TLS, admission, the lobby, /health and the drain on close are every worker server's
(`dagrun.worker.server`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from dagrun.contract.dispatch import Withdrawn
from dagrun.contract.executor import StepRequest
from dagrun.errors import ExecutorError
from dagrun.serving.lobby import AUTHORIZATION
from dagrun.serving.lobby_site import start_app
from dagrun.worker.admission import Busy, Stopping
from dagrun.worker.server import WorkerServer
from dagrun.worker.started import StartedNotice
from executors.http.wire import (
    BUSY,
    JSON,
    MALFORMED,
    REQUEST_ID,
    STARTED,
    STOPPING,
    TAKEN_BACK,
    TOO_LARGE,
    UNAUTHORIZED,
    dumps,
    refusal,
)
from executors.http.withdrawals import Withdrawals

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
        app.router.add_post("/withdraw", self._withdraw)
        app.router.add_get("/health", self._health)
        self._withdrawals = Withdrawals()
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

    async def _execute(self, request: web.Request) -> web.StreamResponse:
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
            return await self._run(request, step)
        finally:
            self._admission.release()

    async def _run(self, request: web.Request, step: StepRequest) -> web.StreamResponse:
        """The result; its headers go ahead of it (`STARTED`) once the step has run a while (`StartedNotice`)."""
        ahead = web.StreamResponse(headers={STARTED: "true", "Content-Type": JSON})
        sending: list[asyncio.Task[Any]] = []  # the headers sent ahead, once the notice comes
        notice = StartedNotice(lambda: sending.append(asyncio.ensure_future(ahead.prepare(request))))
        request_id = request.headers.get(REQUEST_ID)
        self._withdrawals.hold(request_id, notice.dispatch)
        try:
            result = await self._admission.run(step, notice.dispatch)
        except Busy:
            return refusal(HTTPStatus.SERVICE_UNAVAILABLE, BUSY, "the worker is busy; try again")
        except Stopping:
            return refusal(HTTPStatus.SERVICE_UNAVAILABLE, STOPPING, "the worker is stopping")
        except Withdrawn:
            return refusal(HTTPStatus.CONFLICT, TAKEN_BACK, "taken back by its caller before it started")
        finally:
            notice.cancel()
            self._withdrawals.release(request_id)
        if not sending:
            return web.Response(body=result, content_type=JSON)
        await sending[0]
        await ahead.write(result)
        await ahead.write_eof()
        return ahead

    async def _withdraw(self, request: web.Request) -> web.Response:
        """Take back the request named by `REQUEST_ID`, unless its step started (it answers 409 then)."""
        request_id = request.headers.get(REQUEST_ID)
        if request_id:
            self._withdrawals.withdraw(request_id)
        return web.Response(status=HTTPStatus.NO_CONTENT)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(self.health_document(), dumps=dumps)
