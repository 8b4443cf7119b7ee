"""The client side of the WebSocket transport: WebSocketExecutor multiplexes step requests on one connection.

Invariant: `_pending` maps the id of every request still waiting to the connection it was sent on and the
future its reply resolves; a reply counts only on that connection, and a connection that closes fails its
waiting requests, which are sent again (MAX_RESENDS) on the next connection. New requests go to
`_connection` only; a retired connection (dropped, or its worker going away) still delivers the replies
in flight on it. After a drop, connecting is retried with backoff for `reconnect_s` (`executors.reconnection`).
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

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.frames import CloseCode

from dagrun.contract.dispatch import Dispatch, Withdrawn
from dagrun.contract.envelope import decode_result, encode_request
from dagrun.contract.executor import ExecutorOptions, StepRequest, StepResult
from dagrun.errors import ExecutorError, WorkerUnavailable
from dagrun.serving.listening import os_reason
from dagrun.worker.limits import Limits
from executors.reconnection import RECONNECT_S, Reconnection
from executors.websocket.frames import (
    BUSY,
    CANCEL,
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
from executors.worker_client import (
    BUSY_FIRST_DELAY_S,
    BUSY_MAX_DELAY_S,
    MAX_RESENDS,
    Window,
    WorkerTarget,
    await_shared,
    bearer_header,
    describe,
    parse_target,
)

logger = logging.getLogger(__name__)


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
        self._dispatches: dict[bytes, Dispatch] = {}  # of the calls that have one, by request id
        self._tasks: set[asyncio.Task[None]] = set()  # a reader per open connection, cancel notices
        self._window: Window | None = None  # the worker's limits, learned at the first connect
        self._ids = itertools.count(1)
        self._reconnection = Reconnection(self._target.options["reconnect_s"])
        self._is_closed = False

    async def __aenter__(self) -> WebSocketExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def call(self, request: StepRequest, dispatch: Dispatch | None = None) -> StepResult:
        """Run one step on the worker. ExecutorError when it refuses the request or no result comes in
        time, WorkerUnavailable when it cannot be reached. `dispatch` is told when the worker says the step
        started (S), and may take it back (Withdrawn) while it waits for a place at the worker (`Window.place`)
        or for a pool slot there (W, answered T)."""
        if self._is_closed:
            raise RuntimeError("WebSocketExecutor is closed")
        envelope = encode_request(request)
        key = next(self._ids).to_bytes(ID_BYTES, "big")
        frame = b"".join((key, REQUEST, envelope))
        await self._connected()
        window = self._window
        assert window is not None  # set by the first connect
        window.check_size(len(envelope), self._target.safe_url, request)
        async with window.place(dispatch):
            if dispatch is not None:
                self._dispatches[key] = dispatch
            try:
                reply = await self._exchange(request, key, frame, window.deadline_s(request.timeout_s))
            finally:
                self._dispatches.pop(key, None)
        if reply[:1] == RESULT:
            return decode_result(reply[1:])
        if reply[:1] == TAKEN_BACK:
            raise Withdrawn
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
                self._unless_wanted_back(key)
                logger.info("%s: %s: %s; sending it again", self._target.safe_url, describe(request), exc)
                continue
            kind = reply[:1]
            if kind in (BUSY, GOING_AWAY):  # nothing ran
                self._unless_wanted_back(key)
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
        dispatch = self._dispatches.get(key)
        try:
            await connection.send(frame)
            if dispatch is not None:  # the worker takes it back unless it started (T, or its result)
                dispatch.offer_withdrawal(functools.partial(self._notify, connection, key + WITHDRAW))
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
            if dispatch is not None:
                dispatch.offer_withdrawal(None)

    def _unless_wanted_back(self, key: bytes) -> None:
        """Withdrawn, instead of sending again, a request that did not run and that its caller wants back."""
        dispatch = self._dispatches.get(key)
        if dispatch is not None:
            dispatch.give_back_if_wanted()

    def _notify_cancel(self, connection: ClientConnection, key: bytes) -> None:
        """Tell the worker to stop a step nobody waits for; best effort."""
        self._notify(connection, key + CANCEL)

    def _notify(self, connection: ClientConnection, frame: bytes) -> None:
        """Send a frame about a request (cancel, withdraw) without waiting; best effort."""
        if not self._is_closed:
            self._spawn(self._send_quietly(connection, frame))

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
        connection = await self._reconnection.connect(self._open)
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
        """A new connection. WorkerUnavailable when the worker cannot be reached or is stopping (the
        reconnect window may try again), ExecutorError when it refuses the token."""
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
        except OSError as exc:
            reason = os_reason(exc)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
                raise ExecutorError(
                    f"{self._target.safe_url}: the worker refused the token (HTTP {status}); "
                    "give both sides the same --token-file"
                ) from None
            stopping = status == HTTPStatus.SERVICE_UNAVAILABLE
            reason = "the worker is stopping (HTTP 503)" if stopping else f"HTTP {status}"
        except (WebSocketException, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
        raise WorkerUnavailable(f"{self._target.safe_url}: cannot connect: {reason}")

    async def _read(self, connection: ClientConnection) -> None:
        """Hand each reply to the request waiting for it; fail the rest when the connection closes."""
        try:
            async for message in connection:
                if isinstance(message, str) or len(message) < HEADER_BYTES:
                    continue
                if message[ID_BYTES:HEADER_BYTES] == STARTED:
                    self._started(message[:ID_BYTES])
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

    def _started(self, key: bytes) -> None:
        dispatch = self._dispatches.get(key)
        if dispatch is not None:
            dispatch.started()

    def _retire(self, connection: ClientConnection) -> None:
        """Send no new request on `connection`; requests in flight on it still get their replies."""
        if self._connection is connection:
            self._connection = None
            self._reconnection.lost()

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
