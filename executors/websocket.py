"""The WebSocket transport: many step requests multiplexed on one connection, matched by id.

Every message is binary: ``id`` (8 bytes, big-endian, chosen by the client) + ``kind`` (1 byte) + payload.

    client -> worker   Q  request envelope   run this step
                       C  -                  cancel it: the caller gave up
    worker -> client   R  result envelope    the step ran (or failed in the sandbox)
                       E  UTF-8 message      refused: malformed, wrong protocol version ...; nothing ran
                       B  -                  busy: no pool slot freed up in time; nothing ran, send later
                       G  -                  going away: the worker is stopping; nothing ran

``GET /health`` with the token answers the worker's status as JSON instead of upgrading (the same document
as an HTTP worker's /health; `dagrun workers ws://...` reads it). The handshake must carry
``Authorization: Bearer <token>`` or is refused (401) before the upgrade; the
response announces the worker's Limits as ``Dagrun-*`` headers (capacity: the most requests a client
keeps in flight; max-message-bytes ...). A text message or one too short for an id closes the
connection (1003), one over the limit closes it (1009). Compression is off: deflate costs more than it
saves on small envelopes. Keepalive pings detect dead peers. When the connection drops, the client
reconnects with backoff (for `reconnect_s`: ``ws://HOST:PORT?reconnect_s=5``) and sends again the
requests whose results never came; the worker cancels the steps of a connection that dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from dagrun.errors import ExecutorError, WorkerUnavailable
from dagrun.executor import (
    ExecutorOptions,
    StepRequest,
    StepResult,
    decode_result,
    encode_request,
    encode_result,
)
from dagrun.listening import os_reason
from dagrun.worker import ScriptWorker, WorkerStatus
from executors.auth import (
    AUTHORIZATION,
    BUSY_FIRST_DELAY_S,
    BUSY_MAX_DELAY_S,
    MAX_QUEUE_WAIT_S,
    MAX_RESENDS,
    Admission,
    Busy,
    Limits,
    Stopping,
    Window,
    WorkerTarget,
    await_shared,
    bearer_header,
    describe,
    health_document,
    hide_authorization,
    is_authorized,
    listen_error,
    parse_target,
    require_server_token,
    server_ssl_context,
)
from executors.http import transport as http_transport

logger = logging.getLogger(__name__)
wire_logger = hide_authorization(logging.getLogger(__name__ + ".wire"))  # websockets' own log lines

ID_BYTES = 8
HEADER_BYTES = ID_BYTES + 1
REQUEST, CANCEL, RESULT, ERROR, BUSY, GOING_AWAY = b"Q", b"C", b"R", b"E", b"B", b"G"
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
OPEN_TIMEOUT_S = 10.0
RECONNECT_S = 5.0  # how long a client tries to reconnect after a connection dropped
RECONNECT_FIRST_DELAY_S = 0.05
RECONNECT_MAX_DELAY_S = 1.0


class _ConnectionLost(Exception):
    """The connection a request was sent on closed before its result came."""


class WebSocketExecutor:
    """Sends steps to one worker over one multiplexed connection: ``ws://HOST:PORT`` or ``wss://``."""

    def __init__(self, url: str, options: ExecutorOptions) -> None:
        self._target: WorkerTarget = parse_target(url, options, known={"reconnect_s": RECONNECT_S})
        self._headers = bearer_header(self._target.token)
        self._connection: ClientConnection | None = None  # where new requests go
        self._live: set[ClientConnection] = set()  # the current one, and retired ones still draining
        self._connecting: asyncio.Task[ClientConnection] | None = None
        self._pending: dict[bytes, tuple[ClientConnection, asyncio.Future[bytes]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # a reader per open connection, cancel notices
        self._window: Window | None = None  # the worker's limits, learned at the first connect
        self._ids = itertools.count(1)
        self._reconnect_until = 0.0  # after a drop, connecting is retried with backoff until then
        self._is_closed = False

    async def __aenter__(self) -> WebSocketExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def call(self, request: StepRequest) -> StepResult:
        """Run one step on the worker. ExecutorError when it refuses the request or no result comes in
        time, WorkerUnavailable when it cannot be reached."""
        if self._is_closed:
            raise RuntimeError("WebSocketExecutor is closed")
        envelope = encode_request(request)
        key = next(self._ids).to_bytes(ID_BYTES, "big")
        frame = b"".join((key, REQUEST, envelope))
        await self._connected()
        window = self._window
        assert window is not None  # set by the first connect
        window.check_size(len(envelope), self._target.safe_url, request)
        async with window.in_flight:
            reply = await self._exchange(request, key, frame, window.deadline_s(request.timeout_s))
        if reply[:1] == RESULT:
            return decode_result(reply[1:])
        refusal = reply[1:].decode(errors="replace")
        raise ExecutorError(f"{self._target.safe_url}: {describe(request)}: the worker refused it: {refusal}")

    async def _exchange(self, request: StepRequest, key: bytes, frame: bytes, deadline_s: float) -> bytes:
        """Send until a result or a refusal comes back: again after a drop (MAX_RESENDS) or when busy."""
        resends, busy_delay_s = 0, BUSY_FIRST_DELAY_S
        while True:
            connection = await self._connected()
            try:
                reply = await self._send(request, key, frame, connection, deadline_s)
            except _ConnectionLost as exc:
                resends += 1
                if resends > MAX_RESENDS:
                    raise WorkerUnavailable(
                        f"{self._target.safe_url}: {describe(request)}: connection lost {resends} times ({exc})"
                    ) from None
                logger.info("%s: %s: %s; sending it again", self._target.safe_url, describe(request), exc)
                continue
            kind = reply[:1]
            if kind == BUSY:
                await asyncio.sleep(busy_delay_s)  # back off while the worker is saturated, not a poll
                busy_delay_s = min(busy_delay_s * 2, BUSY_MAX_DELAY_S)
            elif kind == GOING_AWAY:
                self._retire(connection)
            else:
                return reply

    async def _send(
        self, request: StepRequest, key: bytes, frame: bytes, connection: ClientConnection, deadline_s: float
    ) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[key] = (connection, future)
        try:
            await connection.send(frame)
            async with asyncio.timeout(deadline_s):
                return await future
        except ConnectionClosed as exc:
            raise _ConnectionLost(f"connection closed: {exc}") from None
        except TimeoutError:
            self._notify_cancel(connection, key)
            raise ExecutorError(
                f"{self._target.safe_url}: {describe(request)}: no result within {deadline_s:.0f} s"
            ) from None
        except asyncio.CancelledError:
            self._notify_cancel(connection, key)
            raise
        finally:
            del self._pending[key]

    def _notify_cancel(self, connection: ClientConnection, key: bytes) -> None:
        """Tell the worker to stop a step nobody waits for; best effort."""
        if not self._is_closed:
            self._spawn(self._send_quietly(connection, key + CANCEL))

    async def _send_quietly(self, connection: ClientConnection, frame: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):  # the worker cancels a closed connection's steps itself
            await connection.send(frame)

    async def _connected(self) -> ClientConnection:
        """The connection new requests go to, opened (with backoff after a drop) by one shared task."""
        if self._connection is not None:
            return self._connection
        if self._is_closed:
            raise ExecutorError(f"{self._target.safe_url}: the executor was closed")
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._connect())
            connecting.add_done_callback(self._connect_done)
        return await await_shared(connecting, self._target.safe_url)

    def _connect_done(self, task: asyncio.Task[ClientConnection]) -> None:
        self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here too: every caller may have been cancelled meanwhile

    async def _connect(self) -> ClientConnection:
        loop = asyncio.get_running_loop()
        delay_s = RECONNECT_FIRST_DELAY_S
        while True:
            try:
                connection = await self._open()
                break
            except OSError as exc:
                reason = os_reason(exc)
            except InvalidStatus as exc:
                status = exc.response.status_code
                reason = (
                    "the worker is stopping (HTTP 503)"
                    if status == HTTPStatus.SERVICE_UNAVAILABLE
                    else f"HTTP {status}"
                )
            except (WebSocketException, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
            if loop.time() + delay_s > self._reconnect_until:
                raise WorkerUnavailable(f"{self._target.safe_url}: cannot connect: {reason}")
            await asyncio.sleep(delay_s)  # reconnect backoff, not a poll
            delay_s = min(delay_s * 2, RECONNECT_MAX_DELAY_S)
        self._reconnect_until = 0.0
        if self._window is None:
            assert connection.response is not None  # the handshake succeeded
            try:
                self._window = Window(Limits.from_headers(connection.response.headers))
            except ExecutorError as exc:
                await connection.close()
                raise ExecutorError(f"{self._target.safe_url}: {exc}") from None
        self._connection = connection
        self._live.add(connection)
        self._spawn(self._read(connection))
        logger.info("connected to worker %s", self._target.safe_url)
        return connection

    async def _open(self) -> ClientConnection:
        try:
            return await connect(
                self._target.url,
                additional_headers=self._headers,
                compression=None,
                max_size=None,  # results are capped by the worker's sandbox; decode_result checks the size
                ping_interval=PING_INTERVAL_S,
                ping_timeout=PING_TIMEOUT_S,
                open_timeout=OPEN_TIMEOUT_S,
                ssl=self._target.ssl,
                proxy=None,  # like aiohttp's default (trust_env=False): no proxy from the environment
                logger=wire_logger,
            )
        except InvalidStatus as exc:
            if exc.response.status_code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
                raise ExecutorError(
                    f"{self._target.safe_url}: the worker refused the token (HTTP {exc.response.status_code}); "
                    "give both sides the same --token-file"
                ) from None
            raise

    async def _read(self, connection: ClientConnection) -> None:
        """Hand each reply to the request waiting for it; fail the rest when the connection closes."""
        try:
            async for message in connection:
                if isinstance(message, str) or len(message) < HEADER_BYTES:
                    continue
                entry = self._pending.get(message[:ID_BYTES])
                if entry is not None and entry[0] is connection and not entry[1].done():
                    entry[1].set_result(message[ID_BYTES:])
                # else: a late reply for a request that timed out or was cancelled
        except ConnectionClosed:
            pass
        finally:
            self._live.discard(connection)
            self._retire(connection)
            reason = f"connection closed ({connection.close_code or CloseCode.ABNORMAL_CLOSURE})"
            for owner, future in self._pending.values():
                if owner is connection and not future.done():
                    future.set_exception(_ConnectionLost(reason))

    def _retire(self, connection: ClientConnection) -> None:
        """Send no new request on `connection`; requests in flight on it still get their replies."""
        if self._connection is connection:
            self._connection = None
            self._reconnect_until = asyncio.get_running_loop().time() + self._target.options["reconnect_s"]

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Close the connections and fail what is in flight with ExecutorError; safe twice."""
        if self._is_closed:
            return
        self._is_closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        await asyncio.gather(*(connection.close() for connection in list(self._live)), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class WebSocketWorkerServer:
    """Serves a ScriptWorker over WebSocket: ``async with WebSocketWorkerServer(worker) as server``.

    `aclose` drains: new connections get 503 and new requests G, running steps may finish within
    `grace_s`, then connections close with 1001 and what is left is cancelled."""

    def __init__(self, worker: ScriptWorker, *, max_queue_wait_s: float = MAX_QUEUE_WAIT_S) -> None:
        settings = worker.settings
        self._worker = worker
        self._token = require_server_token(settings, "ws")
        self._ssl = server_ssl_context(settings)
        self._admission = Admission(worker, max_queue_wait_s=max_queue_wait_s)
        self._server: Server | None = None
        self._is_closed = False

    async def __aenter__(self) -> WebSocketWorkerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("WebSocketWorkerServer is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"{'wss' if self._ssl else 'ws'}://{self._worker.settings.host}:{self.port}"

    @property
    def connections(self) -> set[ServerConnection]:
        """Open connections (fault tests drop them)."""
        return self._server.connections if self._server else set()

    async def start(self) -> None:
        """Listen; ExecutorError when the address cannot be bound."""
        if self._is_closed:
            raise RuntimeError("WebSocketWorkerServer is closed")
        settings = self._worker.settings
        try:
            self._server = await serve(
                self._serve_connection,
                settings.host,
                settings.port,
                compression=None,
                max_size=settings.max_message_bytes + HEADER_BYTES,
                process_request=self._check_request,
                process_response=self._announce,
                ping_interval=PING_INTERVAL_S,
                ping_timeout=PING_TIMEOUT_S,
                open_timeout=OPEN_TIMEOUT_S,
                server_header=None,
                ssl=self._ssl,
                logger=wire_logger,
            )
        except OSError as exc:
            raise listen_error(settings, exc) from exc
        logger.info("worker %s listening on %s", settings.worker_id, self.url)

    async def aclose(self) -> None:
        """Take no new work, let running steps finish within grace_s, then close; safe twice."""
        if self._is_closed:
            return
        self._is_closed = True
        if self._server is None:
            return
        await self._admission.stop()
        self._server.close()  # 1001 going away; each connection's handler cancels what it still holds
        await self._server.wait_closed()
        logger.info("worker %s: websocket server closed", self._worker.settings.worker_id)

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse the handshake before the upgrade: no valid token, or the worker is stopping."""
        if not is_authorized(request.headers.get_all(AUTHORIZATION), self._token):
            logger.warning(
                "worker %s: refused a connection from %s: missing or wrong token",
                self._worker.settings.worker_id,
                _peer(connection),
            )
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        if urlsplit(request.path).path == "/health":  # not an upgrade: the worker's status, as HTTP workers answer it
            document = health_document(self._worker, self._admission.limits)
            response = connection.respond(HTTPStatus.OK, orjson.dumps(document).decode())
            del response.headers["Content-Type"]  # a multi-valued mapping: assigning would add a second one
            response.headers["Content-Type"] = "application/json"
            return response
        if self._worker.stopping:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "worker is stopping\n")
        return None

    def _announce(self, connection: ServerConnection, request: Request, response: Response) -> None:
        for name, value in self._admission.limits.to_headers().items():
            response.headers[name] = value

    async def _serve_connection(self, connection: ServerConnection) -> None:
        tasks: dict[bytes, asyncio.Task[None]] = {}  # the requests of this connection, by id
        logger.info("worker %s: connection from %s", self._worker.settings.worker_id, _peer(connection))
        try:
            async for message in connection:
                if isinstance(message, str) or len(message) < HEADER_BYTES:
                    await connection.close(CloseCode.UNSUPPORTED_DATA, "binary frames only: 8-byte id, kind, payload")
                    return
                reply = self._accept(connection, message, tasks)
                if reply is not None:
                    await connection.send(reply)
        except ConnectionClosed:
            pass
        finally:
            held = list(tasks.values())
            for task in held:
                task.cancel()  # nobody can receive their results; the client sends them again elsewhere
            await asyncio.gather(*held, return_exceptions=True)
            logger.info("worker %s: connection from %s closed", self._worker.settings.worker_id, _peer(connection))

    def _accept(
        self, connection: ServerConnection, message: bytes, tasks: dict[bytes, asyncio.Task[None]]
    ) -> bytes | None:
        """Start the request in `message` or say why not (the reply to send at once)."""
        key, kind = message[:ID_BYTES], message[ID_BYTES:HEADER_BYTES]
        if kind == CANCEL:
            if key in tasks:
                tasks[key].cancel()
            return None
        if kind != REQUEST:
            return key + ERROR + f"unknown frame kind {kind!r}".encode()
        if key in tasks:
            return key + ERROR + b"a request with this id is already running"
        if self._worker.stopping:
            return key + GOING_AWAY
        try:
            request = self._worker.decode(message[HEADER_BYTES:])
        except ExecutorError as exc:
            logger.warning(
                "worker %s: refused request from %s: %s", self._worker.settings.worker_id, _peer(connection), exc
            )
            return key + ERROR + str(exc).encode()
        if not self._admission.admit():
            return key + BUSY
        task = asyncio.create_task(self._run(connection, key, request))
        tasks[key] = task
        task.add_done_callback(functools.partial(self._request_done, tasks, key))
        return None

    def _request_done(self, tasks: dict[bytes, asyncio.Task[None]], key: bytes, task: asyncio.Task[None]) -> None:
        del tasks[key]
        self._admission.release()

    async def _run(self, connection: ServerConnection, key: bytes, request: StepRequest) -> None:
        try:
            reply = key + RESULT + encode_result(await self._admission.run(request))
        except Busy:
            reply = key + BUSY
        except Stopping:
            reply = key + GOING_AWAY
        try:
            await connection.send(reply)
        except ConnectionClosed:
            logger.info(
                "worker %s: %s: result dropped, connection closed", self._worker.settings.worker_id, describe(request)
            )


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"


class WebSocketTransport:
    def open_executor(self, url: str, options: ExecutorOptions) -> WebSocketExecutor:
        return WebSocketExecutor(url, options)

    async def serve_worker(self, worker: ScriptWorker, stop: asyncio.Event) -> None:
        async with WebSocketWorkerServer(worker):
            await stop.wait()

    async def list_workers(self, url: str, options: ExecutorOptions) -> list[WorkerStatus]:
        """The one worker at `url`, as its ``GET /health`` reports it (asked over HTTP, as of an HTTP worker)."""
        return await http_transport.list_workers(_health_url(url), options)


def _health_url(url: str) -> str:
    """The worker's URL as the HTTP client takes it: http[s]://, without the WebSocket-only options."""
    parts = urlsplit(url)
    query = urlencode([(name, value) for name, value in parse_qsl(parts.query) if name == "ca_file"])
    scheme = "https" if parts.scheme.lower() == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, parts.path, query, ""))


transport = WebSocketTransport()
