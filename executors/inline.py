"""The inline transport: the in-process twin of the remote transports, as `MemoryStore` twins the stores.

Each call crosses the wire without a wire: its request envelope goes to `ScriptWorker.answer` in this
process, as a worker server's bytes would (the worker refuses what is over its `max_message_bytes`, runs
the rest in its sandbox pool and counts the timeout from the step's start), and the result envelope comes
back decoded. So every rule of the Executor contract holds as over a real transport: what the worker
refuses or fails to run is an ErrorKind.WORKER failure, and a cancelled call stops its step. The worker
lives inside the executor: there is no server to serve and no worker to list.
URL: ``inline`` or ``inline://?processes=2`` (the settings of ``local://``).
"""

from __future__ import annotations

import asyncio

from dagrun.contract.dispatch import Dispatch
from dagrun.contract.envelope import decode_result, encode_request
from dagrun.contract.executor import ExecutorOptions, StepRequest, StepResult
from dagrun.errors import ExecutorSetupError
from dagrun.worker.script_worker import ScriptWorker, WorkerSettings
from executors.local import settings_from_url


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

    async def call(self, request: StepRequest, dispatch: Dispatch | None = None) -> StepResult:
        """Run one step on the worker; what the worker refuses (a request over its size limit) or fails to
        run comes back as an ErrorKind.WORKER failure, as from a worker server. `dispatch` reaches the
        worker's pool, as a remote worker's start and withdrawal would."""
        if self._is_closed:
            raise RuntimeError("InlineExecutor is closed")
        if not self._is_started:
            self._is_started = True
            await self.worker.__aenter__()  # the pool warms up; the first step waits for it
        envelope = await self.worker.answer(encode_request(request), origin="an inline call", dispatch=dispatch)
        return decode_result(envelope)

    async def aclose(self) -> None:
        """Close the worker and its sandbox pool; safe twice."""
        if self._is_closed:
            return
        self._is_closed = True
        if self._is_started:
            await self.worker.aclose()


class InlineTransport:
    queues_by_context = False  # a worker runs whatever it is sent

    def open_executor(self, url: str, options: ExecutorOptions) -> InlineExecutor:
        """An executor with a worker of its own; ExecutorError names a bad setting in the URL."""
        sandbox = settings_from_url(url, options)
        return InlineExecutor(WorkerSettings(concurrency=sandbox.processes, sandbox=sandbox), options)

    async def serve_worker(self, worker: ScriptWorker, stop: asyncio.Event) -> None:
        raise ExecutorSetupError(
            "the inline executor has no worker server: its worker runs inside each executor; "
            "serve remote steps with `dagrun worker redis|ws|http`"
        )

    async def list_workers(self, url: str, options: ExecutorOptions) -> None:
        """None: no workers to list; the worker lives inside each executor."""
        return None


transport = InlineTransport()
