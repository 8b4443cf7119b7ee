"""SandboxPool: a warm pool of sandbox child processes that runs StepRequests; how each job ends.

A job waits in its trust domain's queue until a child bound to that domain has room (`domains`); each child
holds at most `pipeline_depth` jobs in flight, the first of them running (it started when the previous
result arrived). Past its timeout (`deadlines`) a running job fails with ErrorKind.TIMEOUT, its child is
killed (`children` forks a replacement) and the jobs queued behind it go back to the front of their queue
(they had not started). A child that dies or breaks the protocol fails only its running job
(ErrorKind.WORKER). A cancelled `run` leaves no script running: a queued job is dropped, and the child of a
running one (or of one queued on it, once it would start) is killed and replaced. A job's `Dispatch` is
told when it starts, and may take it back while no child has it (Withdrawn). `run` never raises for
anything a script does. Host function calls are served by `host_calls`, the pipes read by `process`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Mapping
from types import TracebackType

from dagrun.contract.dispatch import Dispatch, Withdrawn
from dagrun.contract.envelope import encode_request
from dagrun.contract.executor import ErrorKind, HostFunction, StepRequest, StepResult
from dagrun.sandbox.children import Children
from dagrun.sandbox.deadlines import Deadlines
from dagrun.sandbox.domains import DomainDispatcher
from dagrun.sandbox.host_calls import HostCalls
from dagrun.sandbox.process import ChildProcess, Job
from dagrun.sandbox.settings import SandboxSettings

logger = logging.getLogger(__name__)


class SandboxPool:
    """`async with SandboxPool(settings, functions={...}) as pool: result = await pool.run(request)`."""

    def __init__(
        self, settings: SandboxSettings | None = None, *, functions: Mapping[str, HostFunction] | None = None
    ) -> None:
        self._settings = settings or SandboxSettings()
        self._calls = HostCalls(functions or {}, max_error_bytes=self._settings.max_error_bytes)
        self._children = Children(
            self._settings, functions=list(self._calls.functions), events=self, calls=self._calls,
            on_ready=self._on_child_ready, on_hopeless=self._fail_waiting,
        )  # fmt: skip
        self._deadlines = Deadlines(self._on_timeout)
        self._domains = DomainDispatcher(self._settings, self._children, on_start=self._job_started)
        self._is_closed = False

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def worker_ids(self) -> list[str]:
        """`local:<pid>` of every ready child."""
        return [child.worker_id for child in self._children.ready]

    async def start(self) -> None:
        """Spawn the missing children concurrently and wait until they are ready.

        Raises ExecutorError when a child cannot be started, RuntimeError after `aclose`."""
        self._check_open()
        await self._children.start()

    async def run(self, request: StepRequest, dispatch: Dispatch | None = None) -> StepResult:
        """Run one step; a failed StepResult for anything the script did. Raises only CancelledError,
        Withdrawn (`dispatch` took it back before a child had it), and RuntimeError once the pool is
        closed. `dispatch` is told when a child starts the step."""
        self._check_open()
        if not 0.0 < request.timeout_s < math.inf:  # a NaN deadline would corrupt the loop's timer heap
            return StepResult.failure(
                ErrorKind.INPUT, "InputError", f"timeout_s must be > 0, not {request.timeout_s!r}"
            )
        try:
            payload = encode_request(request)
        except TypeError as exc:
            return StepResult.failure(ErrorKind.INPUT, "InputError", f"inputs or context are not JSON values: {exc}")
        job = Job(request, payload, asyncio.get_running_loop().create_future(), dispatch)
        if self._children.is_short:
            self._children.top_up()
        self._domains.submit(job)
        if dispatch is not None:  # after `submit`, which may have handed it to a child already
            dispatch.offer_withdrawal(functools.partial(self._withdraw, job))
        try:
            return await job.future
        except asyncio.CancelledError:
            self._cancel(job)
            raise
        finally:
            if dispatch is not None:
                dispatch.offer_withdrawal(None)

    async def aclose(self) -> None:
        """Kill every child's process group and reap it; idempotent."""
        if self._is_closed:
            return
        self._is_closed = True
        jobs = self._domains.close() + self._children.kill_all()
        closed = RuntimeError("SandboxPool is closed")
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(closed)
        await self._calls.aclose()
        await self._children.aclose()

    # --- ChildEvents ---

    def child_result(self, child: ChildProcess, result: StepResult, exits: bool) -> None:
        job = child.jobs.popleft()
        child.last_done = asyncio.get_running_loop().time()
        if not job.future.done():
            job.future.set_result(result)
        if exits:
            request = job.request
            logger.info(
                "run %s step %s attempt %d: sandbox child %s exits after %s; replacing it",
                request.run_id,
                request.step_id,
                request.attempt,
                child.worker_id,
                result.error,
            )
            self._retire(child)
            return
        self._start_next(child)

    def child_breached(self, child: ChildProcess, breach: str) -> None:
        self._fail_head(child, ErrorKind.WORKER, "WorkerError", breach)

    def child_lost(self, child: ChildProcess, reason: str) -> None:
        if child.jobs:
            request = child.jobs[0].request
            logger.warning(
                "run %s step %s attempt %d: sandbox child %s %s; replacing it",
                request.run_id,
                request.step_id,
                request.attempt,
                child.worker_id,
                reason,
            )
        else:
            logger.warning("sandbox child %s %s while idle; replacing it", child.worker_id, reason)
        self._fail_head(child, ErrorKind.WORKER, "WorkerLost", f"the sandbox child {reason} while running the step")

    # --- how jobs end ---

    def _on_child_ready(self) -> None:
        """A child joined the pool: it may take waiting jobs."""
        self._domains.dispatch()

    def _start_next(self, child: ChildProcess) -> None:
        """The child starts its next job as soon as it has sent a result: time it, or, if that job was
        cancelled while it waited there, kill the child (the only way to stop a script; the jobs behind
        it go back to the queue)."""
        if child.jobs and child.jobs[0].future.done():
            request = child.jobs.popleft().request
            logger.info(
                "run %s step %s attempt %d: cancelled before it started; killing sandbox child %s",
                request.run_id,
                request.step_id,
                request.attempt,
                child.worker_id,
            )
            self._retire(child)
            return
        if child.jobs:
            self._job_started(child)
        self._domains.dispatch()

    def _job_started(self, child: ChildProcess) -> None:
        """The child's first job starts running now: time it, and tell its caller."""
        self._deadlines.start(child)
        dispatch = child.jobs[0].dispatch
        if dispatch is not None:
            dispatch.started()

    def _on_timeout(self, child: ChildProcess) -> None:
        request = child.jobs[0].request
        logger.warning(
            "run %s step %s attempt %d: timed out after %s s; killing sandbox child %s",
            request.run_id,
            request.step_id,
            request.attempt,
            request.timeout_s,
            child.worker_id,
        )
        message = f"step exceeded its {float(request.timeout_s)} s timeout"
        self._fail_head(child, ErrorKind.TIMEOUT, "StepTimeout", message)

    def _fail_head(self, child: ChildProcess, kind: ErrorKind, type_: str, message: str) -> None:
        """Fail the running job of a child that is being given up, then retire the child."""
        if child.is_retired:
            return
        if child.jobs:
            job = child.jobs.popleft()
            if not job.future.done():
                elapsed_ms = (asyncio.get_running_loop().time() - job.started_at) * 1000.0
                failure = StepResult.failure(kind, type_, message, elapsed_ms=elapsed_ms, worker_id=child.worker_id)
                job.future.set_result(failure)
        self._retire(child)

    def _retire(self, child: ChildProcess) -> None:
        """Kill a child, put the jobs that had not started back at the front of the queue, replace it."""
        self._domains.put_back(child.jobs)
        child.jobs.clear()
        self._children.replace(child)
        self._domains.dispatch()

    def _withdraw(self, job: Job) -> None:
        """Give a job back to its caller if no child has it yet (one queued on a child runs there)."""
        if job.child is None and not job.future.done():
            self._domains.withdraw(job)
            job.future.set_exception(Withdrawn())

    def _cancel(self, job: Job) -> None:
        child = job.child
        if child is None:
            self._domains.withdraw(job)
        elif child.jobs and child.jobs[0] is job and not child.is_retired:
            # the only way to stop a running script is to kill its child
            child.jobs.popleft()
            logger.info(
                "run %s step %s attempt %d: cancelled; killing sandbox child %s",
                job.request.run_id,
                job.request.step_id,
                job.request.attempt,
                child.worker_id,
            )
            self._retire(child)
        # else: already handed to the child behind the running one; `_start_next` kills the child when
        # it would start it

    def _fail_waiting(self, reason: str) -> None:
        """Waiting jobs with no child to run them and none coming fail instead of waiting forever."""
        for job in self._domains.take_all():
            if not job.future.done():
                job.future.set_result(StepResult.failure(ErrorKind.WORKER, "WorkerUnavailable", reason))

    def _check_open(self) -> None:
        if self._is_closed:
            raise RuntimeError("SandboxPool is closed")
