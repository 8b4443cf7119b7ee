"""The worker side shared by every transport: envelopes in, the sandbox pool runs them, envelopes out.

A transport's worker server (Redis consumer, WebSocket or HTTP server) only moves bytes; a
ScriptWorker decodes each request, runs it in its own warm SandboxPool, encodes the result, logs one
line per step and keeps the counters that liveness reports show. `answer` always gives a result
envelope: a request it cannot decode, or one it fails to run (a bug, a closed pool), becomes the step's
WORKER failure, never a dead server. Its `stopping` flag is the single place a server learns that it
must take no new work. A server stops a step whose caller gave up by cancelling the task that runs it;
a cancelled step counts in neither `steps_done` nor `errors`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

from dagrun.contract.dispatch import Dispatch, Withdrawn
from dagrun.contract.envelope import DEFAULT_MAX_ENVELOPE_BYTES, decode_request, encode_result
from dagrun.contract.executor import ErrorKind, HostFunction, StepRequest, StepResult
from dagrun.contract.transport import WorkerStatus
from dagrun.errors import ExecutorError
from dagrun.sandbox import SandboxPool, SandboxSettings
from dagrun.serving.lobby import LobbySettings

logger = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How a worker serves: where (url or host/port), for whom (token, contexts), how much at once."""

    url: str = ""  # what to connect to (Redis); empty for servers that listen
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port (the server logs the one it got)
    token: str | None = None  # required by the WebSocket and HTTP servers
    tls_cert_file: str | None = None  # servers: serve TLS (wss://, https://) with this certificate chain
    tls_key_file: str | None = None
    lobby: LobbySettings = field(default_factory=LobbySettings)  # servers: connections without the token
    contexts: tuple[str, ...] = ("default",)
    concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)  # steps running at once
    grace_s: float = 30.0  # on shutdown, how long in-flight steps may take to finish
    max_message_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    worker_id: str = field(default_factory=default_worker_id)
    sandbox: SandboxSettings | None = None  # None: SandboxSettings(processes=concurrency)

    @property
    def pool_settings(self) -> SandboxSettings:
        """The settings of the worker's sandbox pool: `sandbox`, or one process per step run at once."""
        return self.sandbox or SandboxSettings(processes=self.concurrency)


class ScriptWorker:
    """Runs step envelopes in a warm sandbox pool: `async with ScriptWorker(settings) as worker`."""

    def __init__(self, settings: WorkerSettings, *, functions: Mapping[str, HostFunction] | None = None) -> None:
        self.settings = settings
        self._pool = SandboxPool(settings.pool_settings, functions=functions)
        self._current: dict[int, str] = {}
        self._steps_done = 0
        self._errors = 0
        self.recent_step_s: float | None = None  # moving average of steps' time in the sandbox (read-ahead decisions)
        self._started_at = time.time()
        self._pool_started: asyncio.Task[None] | None = None
        self.stopping = False

    async def __aenter__(self) -> ScriptWorker:
        # The pool warms up while the transport connects or binds, so that its own checks (a missing
        # token, a port in use) fail at once; the first step waits for the pool if it has to.
        self._pool_started = asyncio.ensure_future(self._start_pool())
        return self

    async def _start_pool(self) -> None:
        await self._pool.start()
        logger.info("worker %s ready: %d sandbox processes", self.settings.worker_id, len(self._pool.worker_ids))

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self.stopping = True
        await self._pool.aclose()  # stops a start still under way, once
        if self._pool_started is not None:
            await asyncio.gather(self._pool_started, return_exceptions=True)

    def decode(self, data: bytes | str) -> StepRequest:
        """Parse an untrusted request envelope; ExecutorError says what is wrong (size, JSON, version)."""
        return decode_request(data, max_bytes=self.settings.max_message_bytes)

    async def run(self, request: StepRequest, dispatch: Dispatch | None = None) -> StepResult:
        """Run one step in the sandbox; a failed StepResult for anything the script does. Cancelling it
        stops the script (its sandbox process is killed and replaced) and logs one line. `dispatch` is
        told when a sandbox process starts it, and may withdraw it until then (Withdrawn)."""
        if self._pool_started is not None and not self._pool_started.done():
            await asyncio.shield(self._pool_started)  # a failed start raises its ExecutorError here
        key = id(request)
        self._current[key] = f"{request.run_id}/{request.step_id}#{request.attempt}"
        started = time.monotonic()
        try:
            result = await self._pool.run(request, dispatch)
        except asyncio.CancelledError:  # the caller gave up, or a shutdown: the pool killed its process
            logger.info(
                "worker %s run %s step %s attempt %d cancelled after %.1f ms",
                self.settings.worker_id,
                request.run_id,
                request.step_id,
                request.attempt,
                (time.monotonic() - started) * 1000,
            )
            raise
        finally:
            del self._current[key]
        self._steps_done += 1
        if not result.ok:
            self._errors += 1
        step_s = result.elapsed_ms / 1000
        self.recent_step_s = step_s if self.recent_step_s is None else 0.8 * self.recent_step_s + 0.2 * step_s
        result = result._replace(worker_id=f"{self.settings.worker_id}/{result.worker_id}")  # which machine, too
        logger.info(
            "worker %s run %s step %s attempt %d %s in %.1f ms%s",
            self.settings.worker_id,
            request.run_id,
            request.step_id,
            request.attempt,
            "succeeded" if result.ok else "failed",
            result.elapsed_ms,
            f": {result.error}" if result.error else "",
        )
        return result

    async def answer(self, data: bytes | str, *, origin: object, dispatch: Dispatch | None = None) -> bytes:
        """The result envelope for a request envelope, whatever happens to it: see `refuse` and
        `answer_request`. `origin` names where it came from in a log line (str() only if logged). Cancelling
        it stops the step."""
        try:
            request = self.decode(data)
        except ExecutorError as exc:
            return self.refuse(str(exc), origin=origin)
        return await self.answer_request(request, dispatch)

    def refuse(self, problem: str, *, origin: object) -> bytes:
        """The result envelope of a request from `origin` refused unrun for `problem`: a WORKER failure."""
        worker_id = self.settings.worker_id
        logger.warning("worker %s: refusing %s: %s", worker_id, origin, problem)
        message = f"worker {worker_id} refused the request: {problem}"
        return encode_result(StepResult.failure(ErrorKind.WORKER, "ExecutorError", message, worker_id=worker_id))

    async def answer_request(self, request: StepRequest, dispatch: Dispatch | None = None) -> bytes:
        """The result envelope of `run`; what goes wrong outside the script (a worker bug, a closed pool)
        becomes the step's WORKER failure. Cancelling it stops the step; a withdrawn one raises Withdrawn."""
        try:
            result = await self.run(request, dispatch)
        except Withdrawn:
            raise
        except Exception as exc:  # a bug or a closed pool becomes this step's failure, never a dead server
            worker_id = self.settings.worker_id
            logger.exception(
                "worker %s run %s step %s attempt %d crashed",
                worker_id,
                request.run_id,
                request.step_id,
                request.attempt,
            )
            result = StepResult.failure(ErrorKind.WORKER, type(exc).__name__, str(exc), worker_id=worker_id)
        return encode_result(result)

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            worker_id=self.settings.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            contexts=self.settings.contexts,
            current=tuple(self._current.values()),
            steps_done=self._steps_done,
            errors=self._errors,
            started_at=self._started_at,
            heartbeat_at=time.time(),
        )
