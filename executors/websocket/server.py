"""The worker side of the WebSocket transport: WebSocketWorkerServer serves a ScriptWorker.

Invariant: each connection's handler holds the task of every request of that connection still running,
by id; a request runs only if `Admission` has room for it (else B) and the worker is not stopping (else G),
and when the connection closes the handler cancels what it still holds: nobody can receive those results.
A request withdrawn (W) while it waits for a pool slot is answered T, unrun; a started one runs on, and a
step still running a while after it started is announced (S, `StartedNotice`).
Until its handshake carries the token, a connection waits in the server's lobby (`dagrun.serving.lobby`): capped,
and closed if the handshake request does not come within the header timeout. The token, TLS, admission,
/health and the drain on close are every worker server's (`dagrun.worker.server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from dagrun.contract.dispatch import Withdrawn
from dagrun.contract.executor import StepRequest
from dagrun.errors import ExecutorError
from dagrun.serving.lobby import AUTHORIZATION, Lobby
from dagrun.worker.admission import Busy, Stopping
from dagrun.worker.server import WorkerServer
from dagrun.worker.started import StartedNotice
from executors.websocket.frames import (
    BUSY,
    CANCEL,
    ERROR,
    GOING_AWAY,
    HEADER_BYTES,
    ID_BYTES,
    OPEN_TIMEOUT_S,
    PING_INTERVAL_S,
    PING_TIMEOUT_S,
    REQUEST,
    RESULT,
    STARTED,
    TAKEN_BACK,
    WITHDRAW,
    wire_logger,
)

_Held = tuple[asyncio.Task[None], StartedNotice]  # a request's step task, and its link with the caller

logger = logging.getLogger(__name__)


class WebSocketWorkerServer(WorkerServer):
    """Serves a ScriptWorker over WebSocket: ``async with WebSocketWorkerServer(worker) as server``.

    `aclose` drains: new connections get 503 and new requests G, running steps may finish within
    `grace_s`, then connections close with 1001 and what is left is cancelled."""

    KIND, SCHEMES, PROTOCOL = "ws", ("ws", "wss"), "websocket"
    _server: Server | None = None
    _notices: set[asyncio.Task[None]]

    @property
    def connections(self) -> set[ServerConnection]:
        """Open connections (fault tests drop them)."""
        return self._server.connections if self._server else set()

    async def _listen(self) -> int:
        self._notices = set()
        settings = self._worker.settings
        tls: dict[str, Any] = {"ssl": self._ssl}
        if self._ssl is not None:  # the TLS handshake ends within the header timeout too
            tls["ssl_handshake_timeout"] = settings.lobby.header_timeout_s
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
            logger=wire_logger,
            create_connection=_lobby_connection(self._lobby),
            **tls,
        )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _close(self) -> None:
        assert self._server is not None  # set by `_listen`
        self._server.close()  # 1001 going away; each connection's handler cancels what it still holds
        await self._server.wait_closed()

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse the handshake before the upgrade: no valid token, or the worker is stopping."""
        if not self._authenticate(request.headers.get_all(AUTHORIZATION), connection.transport):
            self._log_refused_token(f"a connection from {_peer(connection)}")
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        if urlsplit(request.path).path == "/health":  # not an upgrade: the worker's status, as HTTP workers answer it
            response = connection.respond(HTTPStatus.OK, orjson.dumps(self.health_document()).decode())
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
        tasks: dict[bytes, _Held] = {}  # the requests of this connection, by id
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
            held = [task for task, _ in tasks.values()]
            for task in held:
                task.cancel()  # nobody can receive their results; the client sends them again elsewhere
            await asyncio.gather(*held, return_exceptions=True)
            logger.info("worker %s: connection from %s closed", self._worker.settings.worker_id, _peer(connection))

    def _accept(self, connection: ServerConnection, message: bytes, tasks: dict[bytes, _Held]) -> bytes | None:
        """Start the request in `message` or say why not (the reply to send at once)."""
        key, kind = message[:ID_BYTES], message[ID_BYTES:HEADER_BYTES]
        if kind in (CANCEL, WITHDRAW):
            if key in tasks:
                task, notice = tasks[key]
                if kind == CANCEL:
                    task.cancel()
                else:
                    notice.dispatch.withdraw()
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
        notice = StartedNotice(functools.partial(self._send_soon, connection, key + STARTED))
        task = asyncio.create_task(self._run(connection, key, request, notice))
        tasks[key] = (task, notice)
        task.add_done_callback(functools.partial(self._request_done, tasks, key))
        return None

    def _request_done(self, tasks: dict[bytes, _Held], key: bytes, task: asyncio.Task[None]) -> None:
        del tasks[key]
        self._admission.release()

    def _send_soon(self, connection: ServerConnection, frame: bytes) -> None:
        """Send a frame from a callback (a started notice); it is dropped if the connection has closed."""
        task = asyncio.create_task(self._send_quietly(connection, frame))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    @staticmethod
    async def _send_quietly(connection: ServerConnection, frame: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await connection.send(frame)

    async def _run(self, connection: ServerConnection, key: bytes, request: StepRequest, notice: StartedNotice) -> None:
        try:
            reply = key + RESULT + await self._admission.run(request, notice.dispatch)
        except Busy:
            reply = key + BUSY
        except Stopping:
            reply = key + GOING_AWAY
        except Withdrawn:
            reply = key + TAKEN_BACK
        finally:
            notice.cancel()
        try:
            await connection.send(reply)
        except ConnectionClosed:
            logger.info(
                "worker %s: run %s step %s attempt %d: result dropped, connection closed",
                self._worker.settings.worker_id,
                request.run_id,
                request.step_id,
                request.attempt,
            )


def _lobby_connection(lobby: Lobby) -> type[ServerConnection]:
    """The connection class of a server whose connections wait in `lobby` until they authenticate."""

    class LobbyConnection(ServerConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            if not lobby.enter(cast(asyncio.Transport, transport)):  # a server's connections are streams
                self.transport.abort()  # the handshake fails at once; websockets ends the connection's task

        def connection_lost(self, exc: Exception | None) -> None:
            lobby.leave(self.transport)
            super().connection_lost(exc)

    return LobbyConnection


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"
