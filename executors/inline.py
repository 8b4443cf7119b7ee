"""The inline transport: the in-process twin of the remote transports, as `MemoryStore` twins the stores.

Each call crosses the wire without a wire: its request is encoded as the request envelope and decoded by a
`ScriptWorker` in this process (which refuses what is over its `max_message_bytes`), runs in that worker's
sandbox pool (the worker counts the timeout from the step's start), and its result is encoded and decoded
again. So every rule of the Executor contract holds as over a real transport: a request the worker refuses
fails the call with ExecutorError, anything else that goes wrong in the worker is an ErrorKind.WORKER
failure, and a cancelled call stops its step. The worker lives inside the executor: there is no server to
serve and no worker to list. URL: ``inline`` or ``inline://?processes=2`` (the settings of ``local://``).
"""

from __future__ import annotations

import asyncio
import logging

from dagrun.contract.envelope import decode_result, encode_request, encode_result
from dagrun.contract.executor import ErrorKind, ExecutorOptions, StepRequest, StepResult
from dagrun.errors import ExecutorError
from dagrun.worker.script_worker import ScriptWorker, WorkerSettings
from executors.local import settings_from_url

logger = logging.getLogger(__name__)


class InlineExecutor:
    """Runs steps on its own ScriptWorker, through the envelopes: ``async with InlineExecutor(settings) as ex``.

    `worker` is public so that tests can read its status, as they read a remote worker's."""

    def __init__(self, settings: WorkerSettings, options: ExecutorOptions | None = None) -> None:
        self.worker = ScriptWorker(settings, functions=(options or ExecutorOptions()).functions)
        self._is_started = False
        self._is_closed = False

    async def __aenter__(self) -> InlineExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def call(self, request: StepRequest) -> StepResult:
        """Run one step on the worker. ExecutorError when the worker refuses the request (over its size
        limit); a failed result with ErrorKind.WORKER when the worker fails otherwise."""
        if self._is_closed:
            raise RuntimeError("InlineExecutor is closed")
        if not self._is_started:
            self._is_started = True
            await self.worker.__aenter__()  # the pool warms up; the first step waits for it
        try:
            step = self.worker.decode(encode_request(request))
        except ExecutorError as exc:
            where = f"inline worker {self.worker.settings.worker_id}"
            raise ExecutorError(
                f"{where}: refused run {request.run_id} step {request.step_id} attempt {request.attempt}: {exc}"
            ) from None
        return decode_result(encode_result(await self._run(step)))

    async def _run(self, step: StepRequest) -> StepResult:
        """The worker's result; a worker fault (a bug, a pool that failed to start) becomes the step's
        failure, as a worker server sends it."""
        try:
            return await self.worker.run(step)
        except Exception as exc:
            logger.exception(
                "inline worker %s run %s step %s attempt %d: %s",
                self.worker.settings.worker_id,
                step.run_id,
                step.step_id,
                step.attempt,
                exc,
            )
            return StepResult.failure(ErrorKind.WORKER, type(exc).__name__, str(exc))

    async def aclose(self) -> None:
        """Close the worker (a call still running is cancelled with its step); safe twice."""
        if self._is_closed:
            return
        self._is_closed = True
        if self._is_started:
            await self.worker.aclose()


class InlineTransport:
    def open_executor(self, url: str, options: ExecutorOptions) -> InlineExecutor:
        """An executor with a worker of its own; ExecutorError names a bad setting in the URL."""
        sandbox = settings_from_url(url, options)
        return InlineExecutor(WorkerSettings(concurrency=sandbox.processes, sandbox=sandbox), options)

    async def serve_worker(self, worker: ScriptWorker, stop: asyncio.Event) -> None:
        raise ExecutorError(
            "the inline executor has no worker server: its worker runs inside each executor; "
            "serve remote steps with `dagrun worker redis|ws|http`"
        )

    async def list_workers(self, url: str, options: ExecutorOptions) -> None:
        """None: no workers to list; the worker lives inside each executor."""
        return None


transport = InlineTransport()
