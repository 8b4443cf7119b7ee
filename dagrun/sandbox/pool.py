"""SandboxPool: a warm pool of sandbox child processes that runs StepRequests.

A central FIFO holds the requests no child has taken; each child holds at most `pipeline_depth` in
flight, the first of them running (it started when the previous result arrived). One deadline timer
per child watches its running request: past its timeout the child's process group is killed, the
request fails with ErrorKind.TIMEOUT, the requests queued behind it go back to the front of the
central FIFO (they had not started), and a replacement child is spawned. A child that dies fails only
its running request (ErrorKind.WORKER). A cancelled `run` leaves no script running: a queued request is
dropped, and the child of a running one (or of one queued on it, once it would start) is killed and
replaced. `run` never raises for anything a script does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections import deque
from collections.abc import Mapping
from types import TracebackType

from dagrun.contract.envelope import encode_request
from dagrun.contract.executor import ErrorKind, HostFunction, StepRequest, StepResult
from dagrun.errors import ExecutorError
from dagrun.sandbox import confinement, protocol
from dagrun.sandbox.host_calls import HostCalls
from dagrun.sandbox.process import ChildProcess, Job, spawn_child
from dagrun.sandbox.settings import SandboxSettings
from dagrun.sandbox.spawner import Spawner

logger = logging.getLogger(__name__)

REBIND_GRACE_S = 0.02  # an idle child stays its run's this long before another run may have it replaced


class SandboxPool:
    """`async with SandboxPool(settings, functions={...}) as pool: result = await pool.run(request)`."""

    def __init__(
        self, settings: SandboxSettings | None = None, *, functions: Mapping[str, HostFunction] | None = None
    ) -> None:
        self._settings = settings or SandboxSettings()
        self._calls = HostCalls(functions or {}, max_error_bytes=self._settings.max_error_bytes)
        _check_privileges(self._settings)
        # Jobs no child has taken, per trust domain, the domains in the order of their oldest job.
        self._waiting: dict[str, deque[Job]] = {}
        self._children: list[ChildProcess] = []  # ready and not retired
        self._dying: set[ChildProcess] = set()  # killed or exiting, not reaped yet
        self._spawning: set[asyncio.Task[Exception | None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # reaping of retired children
        self._spawn_error: Exception | None = None
        self._unconfined: set[str] = set()  # OS confinement layers a child lacked, already warned about
        self._spawner = Spawner(self._settings, list(self._calls.functions))
        self._room_timer: asyncio.TimerHandle | None = None  # `_make_room` again once a grace ends
        self._is_closed = False
        self._is_flush_due = False

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
        return [child.worker_id for child in self._children]

    async def start(self) -> None:
        """Spawn the missing children concurrently and wait until they are ready.

        Raises ExecutorError when a child cannot be started, RuntimeError after `aclose`."""
        self._check_open()
        results = await asyncio.gather(*self._spawn_missing())
        errors = [error for error in results if error is not None]
        if errors:
            raise ExecutorError(f"sandbox pool: a child process could not be started: {errors[0]}") from errors[0]

    async def run(self, request: StepRequest) -> StepResult:
        """Run one step; a failed StepResult for anything the script did. Raises only CancelledError,
        and RuntimeError once the pool is closed."""
        self._check_open()
        if not 0.0 < request.timeout_s < math.inf:  # a NaN deadline would corrupt the loop's timer heap
            return StepResult.failure(
                ErrorKind.INPUT, "InputError", f"timeout_s must be > 0, not {request.timeout_s!r}"
            )
        try:
            payload = encode_request(request)
        except TypeError as exc:
            return StepResult.failure(ErrorKind.INPUT, "InputError", f"inputs or context are not JSON values: {exc}")
        job = Job(request, payload, asyncio.get_running_loop().create_future())
        domain = self._domain_of(request)
        waiting = self._waiting.get(domain)
        if waiting is None:
            waiting = self._waiting[domain] = deque()
        waiting.append(job)
        if len(self._children) + len(self._spawning) < self._settings.processes:
            self._spawn_missing()
        self._dispatch()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._cancel(job)
            raise

    async def aclose(self) -> None:
        """Kill every child's process group and reap it; idempotent."""
        if self._is_closed:
            return
        self._is_closed = True
        if self._room_timer is not None:
            self._room_timer.cancel()
        for task in self._spawning:
            task.cancel()
        closed = RuntimeError("SandboxPool is closed")
        jobs = [job for waiting in self._waiting.values() for job in waiting]
        self._waiting.clear()
        for child in self._children:
            jobs += child.jobs
            child.jobs.clear()
            child.kill()
            self._dying.add(child)
        self._children.clear()
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(closed)
        await asyncio.gather(*self._spawning, *self._tasks, self._calls.aclose(), return_exceptions=True)
        await asyncio.gather(*(child.wait_closed() for child in list(self._dying)))
        self._dying.clear()
        await self._spawner.aclose()

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

    # --- scheduling ---

    def _dispatch(self) -> None:
        """Hand waiting jobs to children of their trust domain with the fewest in flight, binding a child
        that serves nobody yet to a domain that needs one; then make room for the domains still waiting.

        A write wakes the child, which costs more than the write: an idle child is written to at once
        (it waits), a busy one once per loop iteration by `_flush` (it reads when its step is done)."""
        if not self._waiting or not self._children:
            return
        idle: list[ChildProcess] = []
        # With no child free to bind, only domains with a child of their own can be served: with hundreds
        # of runs waiting, the others are skipped rather than looked at on every result.
        unbound = any(child.domain is None for child in self._children)
        depth = self._settings.pipeline_depth
        servable = None if unbound else {child.domain for child in self._children if len(child.jobs) < depth}
        for domain in list(self._waiting):
            if servable is not None and domain not in servable:
                continue
            jobs = self._waiting[domain]
            while jobs and (child := self._child_for(domain)) is not None:
                self._hand(jobs.popleft(), child, idle)
            if not jobs:
                del self._waiting[domain]
        for child in idle:
            _write_outbox(child)
        if self._waiting:
            self._make_room()

    def _child_for(self, domain: str) -> ChildProcess | None:
        """An idle child of `domain`, else one that serves nobody yet (bound to it now: steps run side by
        side before they queue behind each other), else the child of `domain` with the fewest in flight.
        One pass over the children: this runs for every job."""
        least: ChildProcess | None = None
        spare: ChildProcess | None = None
        for child in self._children:
            if child.domain == domain:
                in_flight = len(child.jobs)
                if not in_flight:
                    return child
                if in_flight < self._settings.pipeline_depth and (least is None or in_flight < len(least.jobs)):
                    least = child
            elif child.domain is None and spare is None:
                spare = child
        if spare is not None:
            spare.domain = domain
            return spare
        return least

    def _hand(self, job: Job, child: ChildProcess, idle: list[ChildProcess]) -> None:
        child.next_id += 1
        job.id, job.child = child.next_id, child
        child.jobs.append(job)
        child.outbox.append(protocol.encode_run(job.id, job.payload))
        if len(child.jobs) == 1:
            self._start_head(child)
            idle.append(child)
        elif not self._is_flush_due:
            self._is_flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _make_room(self) -> None:
        """Replace every idle child of a domain that waits for nothing by a fresh one (forked from the
        zygote: nothing of the old domain's steps is in it) for the domains that wait, which then spread
        over all of them. None while a child that serves nobody yet is there to take a domain. A child
        whose last step ended within REBIND_GRACE_S is left to its run, whose next step is usually on
        its way (its driver submits it on the result): the room is looked for again when the grace ends."""
        if any(child.domain is None for child in self._children):
            return
        now = asyncio.get_running_loop().time()
        graced: list[float] = []
        for child in list(self._children):
            if child.jobs or child.domain in self._waiting:
                continue
            if now - child.last_done < REBIND_GRACE_S:
                graced.append(child.last_done + REBIND_GRACE_S)
            else:
                self._recycle(child)
        if graced and (self._room_timer is None or self._room_timer.when() > min(graced)):
            if self._room_timer is not None:
                self._room_timer.cancel()
            self._room_timer = asyncio.get_running_loop().call_at(min(graced), self._look_for_room)

    def _look_for_room(self) -> None:
        self._room_timer = None
        if not self._is_closed:
            self._dispatch()

    def _domain_of(self, request: StepRequest) -> str:
        """Whose steps may share a child: the settings' named domain, else each run alone."""
        return self._settings.trust_domain or request.run_id

    def _flush(self) -> None:
        self._is_flush_due = False
        for child in self._children:
            _write_outbox(child)

    def _start_head(self, child: ChildProcess) -> None:
        job = child.jobs[0]
        job.started_at = asyncio.get_running_loop().time()
        child.arm_deadline(job.started_at + job.request.timeout_s, self._on_deadline)

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
            self._start_head(child)
        self._dispatch()

    def _on_deadline(self, child: ChildProcess) -> None:
        child.timer = None
        if child.is_retired or not child.jobs:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < child.deadline:
            child.timer = loop.call_at(child.deadline, self._on_deadline, child)
            return
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
        for job in reversed(child.jobs):
            if not job.future.done():
                job.child = None
                waiting = self._waiting.setdefault(self._domain_of(job.request), deque())
                waiting.appendleft(job)
        child.jobs.clear()
        self._recycle(child)
        self._dispatch()

    def _recycle(self, child: ChildProcess) -> None:
        """Kill a child that holds no job any more, reap it in the background and fork a replacement."""
        if child in self._children:
            self._children.remove(child)
        child.kill()
        child.outbox.clear()
        self._dying.add(child)
        task = asyncio.ensure_future(self._reap(child))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if not self._is_closed:
            self._spawn_missing()

    async def _reap(self, child: ChildProcess) -> None:
        await child.wait_closed()
        self._dying.discard(child)

    def _cancel(self, job: Job) -> None:
        child = job.child
        if child is None:
            waiting = self._waiting.get(self._domain_of(job.request))
            if waiting is not None and job in waiting:
                waiting.remove(job)
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

    # --- children ---

    def _spawn_missing(self) -> list[asyncio.Task[Exception | None]]:
        missing = self._settings.processes - len(self._children) - len(self._spawning)
        tasks = [asyncio.ensure_future(self._add_child()) for _ in range(max(missing, 0))]
        self._spawning.update(tasks)
        return tasks

    async def _add_child(self) -> Exception | None:
        child: ChildProcess | None = None
        error: Exception | None = None
        try:
            child = await spawn_child(self, self._calls, self._settings, self._spawner)
        except Exception as exc:
            logger.error("sandbox pool: a child process could not be started: %s", exc)
            self._spawn_error = error = exc
        finally:
            current = asyncio.current_task()
            if current is not None:
                self._spawning.discard(current)
        if child is None:
            self._fail_queue_if_hopeless()
            return error
        if self._is_closed:
            child.kill()
            await child.wait_closed()
            return None
        logger.info("sandbox child %s started, confined by %s", child.worker_id, ", ".join(child.layers) or "rlimits")
        for layer in confinement.missing(child.layers):
            if layer not in self._unconfined:  # said once per pool, never silently
                self._unconfined.add(layer)
                logger.warning("sandbox: no %s: %s", layer, confinement.WITHOUT[layer])
        self._children.append(child)
        self._dispatch()
        return None

    def _fail_queue_if_hopeless(self) -> None:
        """Queued jobs with no child to run them and none coming fail instead of waiting forever."""
        if self._children or self._spawning or self._is_closed:
            return
        reason = f"no sandbox child could be started: {self._spawn_error}"
        jobs = [job for waiting in self._waiting.values() for job in waiting]
        self._waiting.clear()
        for job in jobs:
            if not job.future.done():
                job.future.set_result(StepResult.failure(ErrorKind.WORKER, "WorkerUnavailable", reason))

    def _check_open(self) -> None:
        if self._is_closed:
            raise RuntimeError("SandboxPool is closed")


def _check_privileges(settings: SandboxSettings) -> None:
    drop_to = settings.drop_to
    if drop_to is None and os.geteuid() == 0:
        logger.warning("sandbox children will run as root (drop_to_uid=None): rlimits alone do not confine root")
    elif drop_to is not None and os.geteuid() != 0 and drop_to != (os.geteuid(), os.getegid()):
        raise ValueError(f"drop_to_uid={drop_to[0]} and drop_to_gid={drop_to[1]} need a parent running as root")


def _write_outbox(child: ChildProcess) -> None:
    if child.outbox:
        child.write(b"".join(child.outbox))
        child.outbox.clear()
