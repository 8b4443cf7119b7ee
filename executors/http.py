"""The HTTP transport: one ``POST /execute`` per step over a pooled keep-alive session.

    POST /execute   request envelope -> 200 result envelope
    GET  /health    the worker's status, its Limits and whether it is stopping (JSON)

Every request needs ``Authorization: Bearer <token>``, checked by a middleware before the body is read;
a declared Content-Length over the limit is refused before reading too (aiohttp's client_max_size is
the backstop for chunked bodies). Refusals are JSON ``{"error": message, "code": code}``: 401
unauthorized, 413 too_large, 400 malformed (bad JSON, wrong protocol version; nothing ran), 503 busy
(no pool slot freed up in time: the client sends it again after a backoff) or stopping. The client
probes /health once (token and reachability fail early and clearly; the limits it reads cap its
requests in flight and their size) and gives each request the deadline `Window.deadline_s`. A call that
is cancelled (or gives up) closes its connection, and the worker stops the step: closing the connection
cancels its handler, whose cancelled step has its sandbox process killed and replaced. A worker that
answered and then refuses connections or says it is stopping is likely restarting: a call tries again
with backoff for `reconnect_s` (the WebSocket client's window, `executors.reconnection`) before it fails.
URL: ``http[s]://HOST:PORT[/prefix]?connections=64&reconnect_s=5&ca_file=/path/ca.pem``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from ssl import SSLContext
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from dagrun.contract.envelope import decode_result, encode_request, encode_result
from dagrun.contract.executor import ExecutorOptions, StepRequest, StepResult
from dagrun.contract.transport import WorkerStatus
from dagrun.errors import ExecutorError, WorkerUnavailable
from dagrun.serving.listening import os_reason
from dagrun.serving.lobby import AUTHORIZATION, Lobby, is_authorized
from dagrun.serving.lobby_site import LobbySite
from dagrun.worker.script_worker import ScriptWorker
from executors.auth import (
    BUSY_FIRST_DELAY_S,
    BUSY_MAX_DELAY_S,
    MAX_QUEUE_WAIT_S,
    MAX_RESENDS,
    Admission,
    Busy,
    Limits,
    Stopping,
    Window,
    await_shared,
    bearer_header,
    describe,
    health_document,
    listen_error,
    parse_target,
    require_server_token,
    server_ssl_context,
    status_from_health,
)
from executors.reconnection import RECONNECT_S, Reconnection

logger = logging.getLogger(__name__)

CONNECTIONS = 64  # pooled keep-alive connections per executor (?connections=N)
CONNECT_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 1.0  # after the drain: how long aiohttp waits for handlers before cancelling them
JSON = "application/json"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Dropped(Exception):
    """The connection dropped before the whole answer came."""


class HttpExecutor:
    """Sends steps to one worker, one POST each, over a pooled session: ``http://HOST:PORT`` or ``https://``."""

    def __init__(self, url: str, options: ExecutorOptions) -> None:
        self._target = parse_target(url, options, known={"connections": CONNECTIONS, "reconnect_s": RECONNECT_S})
        base = self._target.url.rstrip("/")
        self._execute_url, self._health_url = f"{base}/execute", f"{base}/health"
        self._session: aiohttp.ClientSession | None = None
        self._probe: asyncio.Task[None] | None = None
        self._window: Window | None = None  # the worker's limits, read from /health
        self._reconnection = Reconnection(self._target.options["reconnect_s"])
        self._is_closed = False

    async def __aenter__(self) -> HttpExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def call(self, request: StepRequest) -> StepResult:
        """Run one step on the worker. ExecutorError when it refuses the request or no result comes in
        time, WorkerUnavailable when it cannot be reached."""
        if self._is_closed:
            raise RuntimeError("HttpExecutor is closed")
        body = encode_request(request)
        await self._ready()
        window = self._window
        assert window is not None  # set by the probe
        window.check_size(len(body), self._target.safe_url, request)
        async with window.in_flight:
            return await self._post(request, body, self._timeout(window.deadline_s(request.timeout_s)))

    async def _post(self, request: StepRequest, body: bytes, timeout: aiohttp.ClientTimeout) -> StepResult:
        """POST until a result or a refusal: again after a dropped connection (MAX_RESENDS), when busy, and
        while the worker is away within the reconnect window."""
        resends, busy_delay_s = 0, BUSY_FIRST_DELAY_S
        post = functools.partial(self._send_to_running_worker, self._execute_url, body, timeout)
        while True:
            try:
                status, payload = await self._reconnection.connect(post)
            except _Dropped as exc:
                resends += 1
                if resends > MAX_RESENDS:
                    raise WorkerUnavailable(
                        f"{self._target.safe_url}: {describe(request)}: connection lost {resends} times ({exc})"
                    ) from None
                logger.info("%s: %s: %s; sending it again", self._target.safe_url, describe(request), exc)
                continue
            if status == HTTPStatus.OK:
                return decode_result(payload)
            code, message = _error_of(payload)
            if status != HTTPStatus.SERVICE_UNAVAILABLE or code != "busy":
                raise self._refusal(f"{self._target.safe_url}: {describe(request)}", status, code, message)
            await asyncio.sleep(busy_delay_s)  # back off while the worker is saturated, not a poll
            busy_delay_s = min(busy_delay_s * 2, BUSY_MAX_DELAY_S)

    async def _send_to_running_worker(
        self, url: str, body: bytes | None, timeout: aiohttp.ClientTimeout
    ) -> tuple[int, bytes]:
        """`_send`, and WorkerUnavailable when the worker answers that it is stopping (it may be restarting)."""
        status, payload = await self._send(url, body, timeout)
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            code, message = _error_of(payload)
            if code == "stopping":
                raise WorkerUnavailable(f"{self._target.safe_url}: {message}")
        return status, payload

    async def _send(self, url: str, body: bytes | None, timeout: aiohttp.ClientTimeout) -> tuple[int, bytes]:
        """One exchange; WorkerUnavailable when the worker cannot be reached, ExecutorError past the deadline."""
        session = self._session_or_new()
        try:
            if body is None:
                async with session.get(url, timeout=timeout) as response:
                    return response.status, await response.read()
            async with session.post(url, data=body, headers={"Content-Type": JSON}, timeout=timeout) as response:
                return response.status, await response.read()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise WorkerUnavailable(f"{self._target.safe_url}: cannot connect: {_reason(exc)}") from None
        except TimeoutError:
            raise ExecutorError(f"{self._target.safe_url}: no answer within {timeout.total:.0f} s") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
            raise _Dropped(_reason(exc)) from None
        except aiohttp.ClientError as exc:
            raise ExecutorError(f"{self._target.safe_url}: {_reason(exc)}") from None

    def _refusal(self, where: str, status: int, code: str, message: str) -> ExecutorError:
        if status == HTTPStatus.UNAUTHORIZED:
            return ExecutorError(f"{where}: the worker refused the token; give both sides the same --token-file")
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            return WorkerUnavailable(f"{where}: {message}")
        return ExecutorError(f"{where}: refused (HTTP {status} {code}): {message}")

    async def _ready(self) -> None:
        """Probe /health once, shared by concurrent first calls; a failed probe is tried again next call."""
        if self._window is not None:
            return
        probe = self._probe
        if probe is None:
            probe = self._probe = asyncio.ensure_future(self._check_health())
            probe.add_done_callback(self._probe_done)
        await await_shared(probe, self._target.safe_url)

    def _probe_done(self, task: asyncio.Task[None]) -> None:
        self._probe = None
        if not task.cancelled():
            task.exception()  # retrieved here too: every caller may have been cancelled meanwhile

    async def _check_health(self) -> None:
        probe = functools.partial(self._send, self._health_url, None, self._timeout(CONNECT_TIMEOUT_S))
        status, payload = await self._reconnection.connect(probe)
        if status != HTTPStatus.OK:
            raise self._refusal(self._target.safe_url, status, *_error_of(payload))
        try:
            limits = Limits.from_json(orjson.loads(payload)["limits"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ExecutorError) as exc:
            raise ExecutorError(f"{self._target.safe_url}: /health: unusable answer: {exc}") from None
        self._window = Window(limits)

    async def worker_status(self) -> WorkerStatus:
        """What the worker's /health says of it; ExecutorError when it cannot be asked."""
        status, payload = await self._send(self._health_url, None, self._timeout(CONNECT_TIMEOUT_S))
        if status != HTTPStatus.OK:
            raise self._refusal(self._target.safe_url, status, *_error_of(payload))
        try:
            return status_from_health(orjson.loads(payload))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ExecutorError(f"{self._target.safe_url}: /health: unusable answer: {exc}") from None

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._is_closed:
            raise ExecutorError(f"{self._target.safe_url}: the executor was closed")
        if self._session is None:
            tls: SSLContext | bool = self._target.ssl or True  # True: verify with the system's CAs
            connector = aiohttp.TCPConnector(limit=int(self._target.options["connections"]), ssl=tls)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=bearer_header(self._target.token), raise_for_status=False
            )
        return self._session

    @staticmethod
    def _timeout(total_s: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total_s, sock_connect=CONNECT_TIMEOUT_S)

    async def aclose(self) -> None:
        """Close the session (in-flight calls fail with ExecutorError); safe twice."""
        if self._is_closed:
            return
        self._is_closed = True
        if self._probe is not None:
            self._probe.cancel()
        if self._session is not None:
            await self._session.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return os_reason(exc.os_error)
    return str(exc) or type(exc).__name__


def _error_of(payload: bytes) -> tuple[str, str]:
    """The code and message of a refusal body; tolerant, as a proxy may have answered instead."""
    try:
        body = orjson.loads(payload)
        return str(body["code"]), str(body["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "unknown", payload[:200].decode(errors="replace") or "(empty body)"


def _refuse(status: HTTPStatus, code: str, message: str, *, close: bool = False) -> web.Response:
    response = web.json_response({"error": message, "code": code}, status=status, dumps=_dumps)
    if close:
        response.force_close()  # the body was not read: do not reuse the connection
    return response


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class HttpWorkerServer:
    """Serves a ScriptWorker over HTTP: ``async with HttpWorkerServer(worker) as server``.

    `aclose` drains: new requests get 503 stopping, running steps may finish within `grace_s`, then the
    server closes and cancels what is left."""

    def __init__(self, worker: ScriptWorker, *, max_queue_wait_s: float = MAX_QUEUE_WAIT_S) -> None:
        settings = worker.settings
        self._worker = worker
        self._token = require_server_token(settings, "http")
        self._ssl = server_ssl_context(settings)
        self._admission = Admission(worker, max_queue_wait_s=max_queue_wait_s)
        self._lobby = Lobby(settings.lobby, name=f"worker {settings.worker_id}")
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._is_closed = False

    async def __aenter__(self) -> HttpWorkerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("HttpWorkerServer is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"{'https' if self._ssl else 'http'}://{self._worker.settings.host}:{self.port}"

    async def start(self) -> None:
        """Listen; ExecutorError when the address cannot be bound."""
        if self._is_closed:
            raise RuntimeError("HttpWorkerServer is closed")
        settings = self._worker.settings
        app = web.Application(middlewares=[self._guard], client_max_size=settings.max_message_bytes)
        app.router.add_post("/execute", self._execute)
        app.router.add_get("/health", self._health)
        # handler_cancellation: a client that disconnects (its caller gave up on the step) cancels the
        # handler, which stops the step's script; aiohttp >= 3.9 lets handlers run on by default
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S, handler_cancellation=True)
        await runner.setup()
        site = LobbySite(runner, settings.host, settings.port, lobby=self._lobby, ssl_context=self._ssl)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise listen_error(settings, exc) from exc
        self._runner = runner
        self._port = runner.addresses[0][1]
        logger.info("worker %s listening on %s", settings.worker_id, self.url)

    async def aclose(self) -> None:
        """Take no new work, let running steps finish within grace_s, then close; safe twice."""
        if self._is_closed:
            return
        self._is_closed = True
        if self._runner is None:
            return
        await self._admission.stop()
        await self._runner.cleanup()
        logger.info("worker %s: http server closed", self._worker.settings.worker_id)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse before the body is read: no valid token (the connection closes), or a declared body over
        the limit. A request with the token takes its connection out of the lobby."""
        if not is_authorized(request.headers.getall(AUTHORIZATION, []), self._token):
            logger.warning(
                "worker %s: refused %s %s from %s: missing or wrong token",
                self._worker.settings.worker_id,
                request.method,
                request.path,
                request.remote,
            )
            return _refuse(HTTPStatus.UNAUTHORIZED, "unauthorized", "missing or wrong token", close=True)
        self._lobby.leave(request.transport)
        limit = self._worker.settings.max_message_bytes
        if request.content_length is not None and request.content_length > limit:
            message = f"request body of {request.content_length} bytes is over the {limit}-byte limit"
            return _refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large", message, close=True)
        return await handler(request)

    async def _execute(self, request: web.Request) -> web.Response:
        if self._worker.stopping:
            return _refuse(HTTPStatus.SERVICE_UNAVAILABLE, "stopping", "the worker is stopping")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self._worker.settings.max_message_bytes
            message = f"request body is over the {limit}-byte limit"
            return _refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large", message, close=True)
        try:
            step = self._worker.decode(body)
        except ExecutorError as exc:
            logger.warning(
                "worker %s: refused a request from %s: %s", self._worker.settings.worker_id, request.remote, exc
            )
            return _refuse(HTTPStatus.BAD_REQUEST, "malformed", str(exc))
        if not self._admission.admit():
            return _refuse(HTTPStatus.SERVICE_UNAVAILABLE, "busy", "the worker is busy; try again")
        try:
            result = await self._admission.run(step)
        except Busy:
            return _refuse(HTTPStatus.SERVICE_UNAVAILABLE, "busy", "the worker is busy; try again")
        except Stopping:
            return _refuse(HTTPStatus.SERVICE_UNAVAILABLE, "stopping", "the worker is stopping")
        finally:
            self._admission.release()
        return web.Response(body=encode_result(result), content_type=JSON)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response(health_document(self._worker, self._admission.limits), dumps=_dumps)


class HttpTransport:
    def open_executor(self, url: str, options: ExecutorOptions) -> HttpExecutor:
        return HttpExecutor(url, options)

    async def serve_worker(self, worker: ScriptWorker, stop: asyncio.Event) -> None:
        async with HttpWorkerServer(worker):
            await stop.wait()

    async def list_workers(self, url: str, options: ExecutorOptions) -> list[WorkerStatus]:
        """The one worker at `url`, as its /health reports it."""
        async with HttpExecutor(url, options) as executor:
            return [await executor.worker_status()]


transport = HttpTransport()
