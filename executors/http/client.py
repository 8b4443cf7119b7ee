"""The client side of the HTTP transport: HttpExecutor sends one ``POST /execute`` per step over a pooled
keep-alive session.

It probes /health once (token and reachability fail early and clearly; the limits it reads cap its
requests in flight and their size) and gives each request the deadline `Window.deadline_s`. A busy
refusal is sent again after a backoff, a dropped connection at most MAX_RESENDS times. A call that is
cancelled (or gives up) closes its connection, which stops the step on the worker. A worker that
answered and then refuses connections or says it is stopping is likely restarting: a call tries again
with backoff for `reconnect_s` (`executors.reconnection`) before it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import Callable, Mapping
from http import HTTPStatus
from ssl import SSLContext
from typing import Any

import aiohttp
import orjson

from dagrun.cancellation import cancel_and_wait
from dagrun.contract.dispatch import Dispatch, Withdrawn
from dagrun.contract.envelope import decode_result, encode_request
from dagrun.contract.executor import ExecutorOptions, StepRequest, StepResult
from dagrun.contract.transport import WorkerStatus
from dagrun.errors import ExecutorError, WorkerUnavailable
from dagrun.serving.listening import os_reason
from dagrun.worker.limits import Limits
from executors.http.wire import BUSY, JSON, REQUEST_ID, STARTED, STOPPING, TAKEN_BACK, error_of
from executors.reconnection import RECONNECT_S, Reconnection
from executors.worker_client import (
    BUSY_FIRST_DELAY_S,
    BUSY_MAX_DELAY_S,
    MAX_RESENDS,
    Window,
    await_shared,
    bearer_header,
    describe,
    parse_target,
    status_from_health,
)

logger = logging.getLogger(__name__)

CONNECTIONS = 64  # pooled keep-alive connections per executor (?connections=N)
CONNECT_TIMEOUT_S = 10.0


class _Dropped(Exception):
    """The connection dropped before the whole answer came."""


class HttpExecutor:
    """Sends steps to one worker, one POST each, over a pooled session: ``http://HOST:PORT`` or ``https://``."""

    def __init__(self, url: str, options: ExecutorOptions) -> None:
        self._target = parse_target(url, options, known={"connections": CONNECTIONS, "reconnect_s": RECONNECT_S})
        base = self._target.url.rstrip("/")
        self._execute_url, self._health_url = f"{base}/execute", f"{base}/health"
        self._withdraw_url = f"{base}/withdraw"
        self._withdrawing: set[asyncio.Task[None]] = set()  # `POST /withdraw`s under way
        self._session: aiohttp.ClientSession | None = None
        self._probe: asyncio.Task[None] | None = None
        self._window: Window | None = None  # the worker's limits, read from /health
        self._reconnection = Reconnection(self._target.options["reconnect_s"])
        self._is_closed = False

    async def __aenter__(self) -> HttpExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def call(self, request: StepRequest, dispatch: Dispatch | None = None) -> StepResult:
        """Run one step on the worker. ExecutorError when it refuses the request or no result comes in
        time, WorkerUnavailable when it cannot be reached. `dispatch` is told when the worker sends the
        result's headers ahead (`wire.STARTED`), and may take the step back (Withdrawn) while it waits for a
        place at the worker (`Window.place`) or for a pool slot there (`POST /withdraw`)."""
        if self._is_closed:
            raise RuntimeError("HttpExecutor is closed")
        body = encode_request(request)
        await self._ready()
        window = self._window
        assert window is not None  # set by the probe
        window.check_size(len(body), self._target.safe_url, request)
        async with window.place(dispatch):
            timeout = self._timeout(window.deadline_s(request.timeout_s))
            if dispatch is None:
                return await self._post(request, body, timeout, None)
            request_id = secrets.token_hex(16)
            dispatch.offer_withdrawal(functools.partial(self._take_back, request_id))
            try:
                return await self._post(request, body, timeout, dispatch, request_id)
            finally:
                dispatch.offer_withdrawal(None)

    async def _post(
        self,
        request: StepRequest,
        body: bytes,
        timeout: aiohttp.ClientTimeout,
        dispatch: Dispatch | None,
        request_id: str = "",
    ) -> StepResult:
        """POST until a result or a refusal: again after a dropped connection (MAX_RESENDS), when busy (unless
        it is wanted back), and while the worker is away within the reconnect window."""
        resends, busy_delay_s = 0, BUSY_FIRST_DELAY_S
        headers = {"Content-Type": JSON, REQUEST_ID: request_id} if request_id else {"Content-Type": JSON}
        on_started = dispatch.started if dispatch is not None else None
        post = functools.partial(
            self._send_to_running_worker, self._execute_url, body, timeout, headers=headers, on_started=on_started
        )
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
            code, message = error_of(payload)
            if code == TAKEN_BACK:
                raise Withdrawn  # nothing ran
            if code == BUSY and dispatch is not None:
                dispatch.give_back_if_wanted()
            if status != HTTPStatus.SERVICE_UNAVAILABLE or code != BUSY:
                raise self._refusal(f"{self._target.safe_url}: {describe(request)}", status, code, message)
            await asyncio.sleep(busy_delay_s)  # back off while the worker is saturated, not a poll
            busy_delay_s = min(busy_delay_s * 2, BUSY_MAX_DELAY_S)

    async def _send_to_running_worker(
        self, url: str, body: bytes | None, timeout: aiohttp.ClientTimeout, **options: Any
    ) -> tuple[int, bytes]:
        """`_send`, and WorkerUnavailable when the worker answers that it is stopping (it may be restarting)."""
        status, payload = await self._send(url, body, timeout, **options)
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            code, message = error_of(payload)
            if code == STOPPING:
                raise WorkerUnavailable(f"{self._target.safe_url}: {message}")
        return status, payload

    async def _send(
        self,
        url: str,
        body: bytes | None,
        timeout: aiohttp.ClientTimeout,
        *,
        headers: Mapping[str, str] | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> tuple[int, bytes]:
        """One exchange (a GET without a body); `on_started` when the headers come ahead of the body
        (`wire.STARTED`). WorkerUnavailable when the worker cannot be reached, ExecutorError past the deadline."""
        session = self._session_or_new()
        try:
            if body is None:
                async with session.get(url, timeout=timeout) as response:
                    return response.status, await response.read()
            async with session.post(url, data=body, headers=headers, timeout=timeout) as response:
                if on_started is not None and response.headers.get(STARTED):
                    on_started()
                return response.status, await response.read()
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise WorkerUnavailable(f"{self._target.safe_url}: cannot connect: {_reason(exc)}") from None
        except TimeoutError:
            raise ExecutorError(f"{self._target.safe_url}: no answer within {timeout.total:.0f} s") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
            raise _Dropped(_reason(exc)) from None
        except aiohttp.ClientError as exc:
            raise ExecutorError(f"{self._target.safe_url}: {_reason(exc)}") from None

    def _take_back(self, request_id: str) -> None:
        """Ask the worker for a request back (`POST /withdraw`), without waiting; best effort."""
        task = asyncio.ensure_future(self._send_withdraw(request_id))
        self._withdrawing.add(task)
        task.add_done_callback(self._withdrawing.discard)

    async def _send_withdraw(self, request_id: str) -> None:
        with contextlib.suppress(ExecutorError, _Dropped):  # the step then runs, and answers as any other
            await self._send(
                self._withdraw_url, b"", self._timeout(CONNECT_TIMEOUT_S), headers={REQUEST_ID: request_id}
            )

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
            raise self._refusal(self._target.safe_url, status, *error_of(payload))
        try:
            limits = Limits.from_json(orjson.loads(payload)["limits"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ExecutorError) as exc:
            raise ExecutorError(f"{self._target.safe_url}: /health: unusable answer: {exc}") from None
        self._window = Window(limits)

    async def worker_status(self) -> WorkerStatus:
        """What the worker's /health says of it; ExecutorError when it cannot be asked."""
        status, payload = await self._send(self._health_url, None, self._timeout(CONNECT_TIMEOUT_S))
        if status != HTTPStatus.OK:
            raise self._refusal(self._target.safe_url, status, *error_of(payload))
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
        await cancel_and_wait(*self._withdrawing)
        if self._session is not None:
            await self._session.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return os_reason(exc.os_error)
    return str(exc) or type(exc).__name__
