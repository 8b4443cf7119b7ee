"""Driving one run: a Scheduler decides what may start, executors run it, the store keeps every change.

Each started step is one task that resolves its inputs, calls its executor (retrying with backoff) or
waits for its signal, records every state change and, when it ends, hands the Scheduler its completion;
whatever that unlocks starts at once. Nothing polls: the run ends when its TaskGroup has no task left.

A driver starts from a new run or from one read back from the store (crash recovery): completed steps
keep their outputs, steps that were running run again as a new attempt. Commands (cancel, pause,
resume, signal) come from the run's command log, replayed whole when the driver starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any, NamedTuple

from dagrun.cancellation import cancel_and_wait
from dagrun.contract.executor import ErrorKind, Executor, StepError, StepRequest, StepResult
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.engine.control import end_cancelled
from dagrun.engine.outcome import RunResult, StepOutcome
from dagrun.engine.scheduler import Scheduler
from dagrun.engine.signals import SignalBox
from dagrun.errors import ExecutorError, LeaseLost, RunHandedBack, UnresolvedInput
from dagrun.flow.model import Flow, Step
from dagrun.store.base import Command, CommandKind, StepRecord, Store

logger = logging.getLogger(__name__)

StepListener = Callable[[StepRecord], None]


class StoredRun(NamedTuple):
    """What a driver taking a run over reads back from the store (commands are read by `drive`)."""

    steps: list[StepRecord]
    context: dict[str, Any]


class Stop(Enum):
    """Why a driver stops before its run has ended."""

    CANCEL = "cancelled"  # an operator cancelled the run: it ends cancelled
    HAND_BACK = "handed back"  # the lease was lost or the orchestrator shuts down: write nothing more


class RunDriver:
    """One run being driven: the Scheduler, the ready queue, what each step produced, the pause gate."""

    def __init__(
        self,
        store: Store,
        executor_of: Callable[[str], Executor],
        flow: Flow,
        run_id: str,
        flow_inputs: dict[str, Any],
        *,
        max_parallel: int,
        fail_fast: bool,
        listener: StepListener | None,
    ) -> None:
        self.run_id = run_id
        self._store = store
        self._executor_of = executor_of
        self._flow = flow
        self._flow_inputs = flow_inputs
        self._max_parallel = max_parallel
        self._fail_fast = fail_fast
        self._listener = listener
        self._steps = {step.id: step for step in flow.steps}
        self._scheduler = Scheduler(flow)
        self._ready: deque[str] = deque()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._outputs_of: dict[str, dict[str, Any]] = {}  # succeeded steps only
        self._attempts = dict.fromkeys(self._steps, 0)
        self._failures = dict.fromkeys(self._steps, 0)  # failed attempts; an interrupted one is not one
        self._resumed_from: dict[str, StepRecord] = {}  # steps that were waiting when the run was taken over
        self._errors: dict[str, StepError] = {}
        self._context: dict[str, Any] = {}
        self._first_failure: str | None = None
        self._initial: list[str] = self._scheduler.roots()
        self._unrecorded_skips: list[str] = []  # skips that follow from a stored run but were never written
        self._task_group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[Any] | None = None
        self._stop: Stop | None = None
        self._stopping: asyncio.Task[None] | None = None  # cancels the drive task until it ends
        self._stepping = False  # steps may be running: stopping must cancel them
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._commands_seen = 0
        self._commands_lock = asyncio.Lock()
        self._signals = SignalBox()

    @property
    def is_paused(self) -> bool:
        return not self._unpaused.is_set()

    def restore(self, stored: StoredRun) -> None:
        """Take up a run driven before from its stored state, before `drive`."""
        steps = {record.step_id: record for record in stored.steps}
        ended = {}
        for step_id, record in steps.items():
            self._attempts[step_id] = record.attempt
            if record.status == StepStatus.SUCCEEDED:
                self._outputs_of[step_id] = record.outputs
            if record.error is not None:
                self._errors[step_id] = record.error
            if record.status in (StepStatus.SUCCEEDED, StepStatus.FAILED):
                ended[step_id] = record.status
            self._failures[step_id] = _failed_attempts(record)
            if record.status == StepStatus.WAITING:
                self._resumed_from[step_id] = record
        for step_id in self._steps:
            if ended.get(step_id) == StepStatus.FAILED:
                self._first_failure = self._first_failure or f"step {step_id!r} failed: {self._errors.get(step_id)}"
        decisions = self._scheduler.restore(ended)
        self._initial = decisions.ready
        self._unrecorded_skips = [
            step_id for step_id in decisions.skipped if steps[step_id].status != StepStatus.SKIPPED
        ]
        self._context = stored.context

    async def drive(self, *, stored_status: RunStatus) -> RunResult:
        """Run to the end and return the outcome. `stored_status` is the run's status in the store (PENDING
        for a new run). RunHandedBack when stopped by `stop(Stop.HAND_BACK)`, or when the store refused a
        write because another driver took the run's lease (LeaseLost: this one writes nothing more)."""
        try:
            return await self._drive(stored_status)
        except LeaseLost as exc:
            logger.error("run %s: %s; stopping here", self.run_id, exc)
            raise RunHandedBack(self.run_id) from exc

    async def _drive(self, stored_status: RunStatus) -> RunResult:
        self._task = asyncio.current_task()
        logger.info("run %s of flow %r: driving %d steps", self.run_id, self._flow.name, len(self._steps))
        try:
            async with asyncio.TaskGroup() as task_group:
                self._task_group = task_group
                await self._catch_up(stored_status)
                if self._stop is None:  # a cancel in the log, or a hand-back meanwhile: no step starts
                    await self._record_skips(self._unrecorded_skips)
                    if self.is_paused:
                        self._hold_while_paused()
                    self._ready.extend(self._initial)
                    self._stepping = True
                    self._pump()
        except asyncio.CancelledError:
            return await self._stopped(cancelled=True)
        except BaseExceptionGroup as group:
            # A step task raises only on a bug or a store failure; end the run failed, then surface it.
            lost = group.subgroup(LeaseLost)
            if lost is not None:  # the run is another driver's now: write nothing
                raise lost.exceptions[0] from group
            cause = group.exceptions[0]
            await asyncio.shield(
                self._store.set_run_status(self.run_id, RunStatus.FAILED, at=time.time(), error=str(cause))
            )
            raise cause from group
        if self._stop is not None:  # stopped before any step started
            return await self._stopped(cancelled=False)
        status = RunStatus.FAILED if self._first_failure else RunStatus.SUCCEEDED
        await self._store.set_run_status(self.run_id, status, at=time.time(), error=self._first_failure)
        await self._store.flush()
        logger.info("run %s ended %s", self.run_id, status)
        return self._result(status)

    def stop(self, reason: Stop) -> None:
        """Stop driving: CANCEL ends the run cancelled; HAND_BACK leaves it as it is for another driver.
        Steps are stopped by cancelling the drive task; before any has started, `drive` sees the reason."""
        if self._stop is None:
            self._stop = reason
            if self._task is not None and self._stepping:
                self._stopping = asyncio.create_task(cancel_and_wait(self._task))

    async def apply_new_commands(self) -> None:
        """Apply the commands sent since the last call (called when a notice or a lease renewal says so).
        Before `drive` has caught up with the log there is nothing to do: catching up reads them all."""
        if self._task_group is None or self._stop is not None:
            return
        async with self._commands_lock:
            for command in await self._store.get_commands(self.run_id, after_seq=self._commands_seen):
                self._commands_seen = command.seq
                logger.info("run %s: applying %s", self.run_id, command.kind)
                if command.kind == CommandKind.PAUSE:
                    await self._pause()
                elif command.kind == CommandKind.RESUME:
                    await self._resume()
                else:
                    self._apply_at_once(command)

    async def _catch_up(self, stored_status: RunStatus) -> None:
        """Replay the whole command log (a run taken over may have many), then write the run status it
        leads to once, rather than once per pause and resume."""
        async with self._commands_lock:
            for command in await self._store.get_commands(self.run_id):
                self._commands_seen = command.seq
                if command.kind == CommandKind.PAUSE:
                    self._unpaused.clear()
                elif command.kind == CommandKind.RESUME:
                    self._unpaused.set()
                else:
                    self._apply_at_once(command)
        status = RunStatus.PAUSED if self.is_paused else RunStatus.RUNNING
        if status != stored_status and self._stop is None:
            await self._store.set_run_status(self.run_id, status, at=time.time())

    def _apply_at_once(self, command: Command) -> None:
        """Commands that need no write of their own: cancel (the stop writes) and signal."""
        if command.kind == CommandKind.CANCEL:
            self.stop(Stop.CANCEL)
        elif command.step_id in self._steps and not self._scheduler.status[command.step_id].is_terminal:
            self._signals.deliver(command.step_id, command.values)

    def _hold_while_paused(self) -> None:
        """Keep the TaskGroup open while no step runs, so that a paused run waits for `resume`."""
        assert self._task_group is not None
        self._task_group.create_task(self._unpaused.wait())

    async def _pause(self) -> None:
        if self.is_paused:
            return
        self._unpaused.clear()
        self._hold_while_paused()
        await self._store.set_run_status(self.run_id, RunStatus.PAUSED, at=time.time())

    async def _resume(self) -> None:
        if not self.is_paused:
            return
        await self._store.set_run_status(self.run_id, RunStatus.RUNNING, at=time.time())
        self._unpaused.set()
        self._pump()

    async def _stopped(self, *, cancelled: bool) -> RunResult:
        """The drive was stopped: by `stop`, or by a cancel from outside (which counts as a cancel)."""
        if self._stop is None:  # cancelled from outside (Ctrl-C, a caller's timeout): record it, re-raise
            await asyncio.shield(self._finish_cancelled("cancelled"))
            raise asyncio.CancelledError
        task = asyncio.current_task()
        if cancelled and task is not None:
            task.uncancel()  # the cancel came from `stop`, which says what follows
        if self._stop is Stop.HAND_BACK:
            logger.warning("run %s handed back: this driver stopped without ending it", self.run_id)
            raise RunHandedBack(self.run_id)
        await asyncio.shield(self._finish_cancelled("cancelled by an operator"))
        logger.info("run %s ended cancelled", self.run_id)
        return self._result(RunStatus.CANCELLED)

    def _pump(self) -> None:
        """Start ready steps while there are free slots and the run is not paused."""
        assert self._task_group is not None
        while self._ready and len(self._running) < self._max_parallel and not self.is_paused and self._stop is None:
            step_id = self._ready.popleft()
            self._scheduler.start(step_id)
            self._running[step_id] = self._task_group.create_task(self._run_step(self._steps[step_id]))

    async def _run_step(self, step: Step) -> None:
        if step.wait_for is None:
            status = await self._attempt_until_done(step)
        else:
            status = await self._wait_for_signal(step)
        del self._running[step.id]
        decisions = self._scheduler.complete(step.id, status)
        await self._record_skips(decisions.skipped)
        if status == StepStatus.FAILED and self._fail_fast:
            await self._cancel_rest()
            return
        self._ready.extend(decisions.ready)
        self._pump()

    async def _attempt_until_done(self, step: Step) -> StepStatus:
        policy = step.retries
        while True:
            await self._unpaused.wait()  # a retry waits out a pause
            attempt = self._attempts[step.id] = self._attempts[step.id] + 1
            started_at = time.time()
            await self._record(StepRecord(self.run_id, step.id, StepStatus.RUNNING, attempt, started_at))
            result = await self._call(step, attempt)
            if result.ok:
                await self._succeed(step, attempt, started_at, result)
                return StepStatus.SUCCEEDED
            assert result.error is not None
            self._errors[step.id] = result.error
            failures = self._failures[step.id] = self._failures[step.id] + 1
            done = failures >= policy.max_attempts
            delay_s = 0.0 if done else policy.delay_s(failures)
            message = f"attempt {attempt} failed: {result.error}" + ("" if done else f"; retrying in {delay_s:.2f} s")
            status = StepStatus.FAILED if done else StepStatus.READY
            record = StepRecord(
                self.run_id, step.id, status, attempt, started_at, time.time(), error=result.error, logs=result.logs,
                worker_id=result.worker_id, elapsed_ms=result.elapsed_ms,
            )  # fmt: skip
            await self._record(record, message=message)
            if done:
                self._first_failure = self._first_failure or f"step {step.id!r} failed: {result.error}"
                return StepStatus.FAILED
            await asyncio.sleep(delay_s)  # the retry backoff, not a poll

    async def _wait_for_signal(self, step: Step) -> StepStatus:
        """A human-input step: `waiting` until a signal brings its fields, or failed at its timeout."""
        assert step.wait_for is not None
        resumed = self._resumed_from.pop(step.id, None)
        fields = step.wait_for.fields
        if resumed is not None and resumed.started_at is not None:  # keep waiting where the last driver was
            attempt, started_at = resumed.attempt, resumed.started_at
            if self._listener is not None:  # already recorded as waiting: told, not written again
                self._listener(resumed)
        else:
            attempt, started_at = self._attempts[step.id] + 1, time.time()
            await self._record(
                StepRecord(self.run_id, step.id, StepStatus.WAITING, attempt, started_at),
                message=f"waiting for a signal with {', '.join(fields)}",
            )
        self._attempts[step.id] = attempt
        timeout_s = step.wait_for.timeout_s
        try:
            values = await self._signals.receive(
                step.id, timeout_s=None if timeout_s is None else started_at + timeout_s - time.time()
            )
        except TimeoutError:
            error = StepError(ErrorKind.TIMEOUT, "SignalTimeout", f"no signal within {timeout_s:g} s")
            return await self._fail_waiting(step, attempt, started_at, error)
        outputs = {field: values.get(field) for field in fields}
        self._outputs_of[step.id] = outputs
        await self._record(
            StepRecord(self.run_id, step.id, StepStatus.SUCCEEDED, attempt, started_at, time.time(), outputs),
            message="signalled",
        )
        return StepStatus.SUCCEEDED

    async def _fail_waiting(self, step: Step, attempt: int, started_at: float, error: StepError) -> StepStatus:
        self._errors[step.id] = error
        self._first_failure = self._first_failure or f"step {step.id!r} failed: {error}"
        record = StepRecord(self.run_id, step.id, StepStatus.FAILED, attempt, started_at, time.time(), error=error)
        await self._record(record, message=str(error))
        return StepStatus.FAILED

    async def _call(self, step: Step, attempt: int) -> StepResult:
        try:
            inputs = step.resolve_inputs(self._flow_inputs, self._outputs_of)
        except UnresolvedInput as exc:
            return StepResult.failure(ErrorKind.INPUT, "UnresolvedInput", str(exc))
        request = StepRequest(
            self.run_id,
            step.id,
            attempt,
            step.script,
            step.script_hash,
            inputs,
            self._context,
            step.context_id,
            step.timeout_s,
        )
        try:
            # No timeout here: a step may wait in a remote queue; only the executor knows when it started.
            result = await self._executor_of(step.executor).call(request)
        except ExecutorError as exc:
            return StepResult.failure(ErrorKind.WORKER, type(exc).__name__, str(exc))
        if result.ok and step.outputs is not None:
            missing = [key for key in step.outputs if key not in result.outputs]
            if missing:
                message = f"declared outputs not set: {', '.join(missing)}"
                return StepResult.failure(ErrorKind.OUTPUT, "MissingOutput", message, logs=result.logs)
        return result

    async def _succeed(self, step: Step, attempt: int, started_at: float, result: StepResult) -> None:
        message = ""
        if result.context_ops:
            self._context, rejected = await self._store.apply_context(self.run_id, result.context_ops)
            message = "; ".join(rejected)
        self._outputs_of[step.id] = result.outputs
        self._errors.pop(step.id, None)
        record = StepRecord(
            self.run_id, step.id, StepStatus.SUCCEEDED, attempt, started_at, time.time(), result.outputs, None,
            result.logs, result.worker_id, result.elapsed_ms,
        )  # fmt: skip
        await self._record(record, message=message)

    async def _record(self, record: StepRecord, *, message: str = "") -> None:
        if self._stop is not None:
            # Stopped: the cancel on its way may be lost (see dagrun.cancellation); a step writes nothing more.
            raise asyncio.CancelledError
        await self._store.record_step(record, message=message)
        if self._listener is not None:
            self._listener(record)

    async def _record_skips(self, skipped: list[str]) -> None:
        now = time.time()
        for step_id in skipped:
            record = StepRecord(self.run_id, step_id, StepStatus.SKIPPED, 0, None, now)
            await self._record(record, message=f"run_if {self._steps[step_id].run_if} not met")

    async def _cancel_rest(self) -> None:
        """Fail fast: stop every running step and end every step that has not ended as cancelled."""
        self._ready.clear()
        for task in self._running.values():
            task.cancel()
        self._running.clear()
        now = time.time()
        for step_id in self._scheduler.cancel_rest():
            record = StepRecord(self.run_id, step_id, StepStatus.CANCELLED, self._attempts[step_id], None, now)
            await self._record(record, message="cancelled after a failure (fail fast)")

    async def _finish_cancelled(self, reason: str) -> None:
        now = time.time()
        cancelled = [
            StepRecord(self.run_id, step_id, StepStatus.CANCELLED, self._attempts[step_id], None, now)
            for step_id in self._scheduler.cancel_rest()
        ]
        await end_cancelled(self._store, self.run_id, cancelled, reason, now)
        if self._listener is not None:
            for record in cancelled:
                self._listener(record)

    def _result(self, status: RunStatus) -> RunResult:
        steps = {
            step_id: StepOutcome(
                self._scheduler.status[step_id],
                self._attempts[step_id],
                self._outputs_of.get(step_id, {}),
                self._errors.get(step_id),
            )
            for step_id in self._steps
        }
        return RunResult(self.run_id, status, self._context, steps)


def _failed_attempts(record: StepRecord) -> int:
    """How many of a stored step's attempts failed: all of them when it failed or waits to retry (READY
    after a failure), all but the last when the last was cut off (RUNNING, WAITING)."""
    if record.status in (StepStatus.FAILED, StepStatus.READY):
        return record.attempt
    return max(record.attempt - 1, 0)
