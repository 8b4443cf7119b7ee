"""The orchestrator drives runs: a Scheduler decides what may start, executors run it, the store keeps it.

Each started step is one task that resolves its inputs, calls its executor (retrying with backoff),
records every state change and, when it ends, hands the Scheduler its completion; whatever that
unlocks starts at once. Nothing polls: the run ends when its TaskGroup has no task left.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from dagrun.errors import ExecutorError, FlowError, Problem, UnresolvedInput
from dagrun.executor import (
    ErrorKind,
    Executor,
    ExecutorOptions,
    HostFunction,
    StepError,
    StepRequest,
    StepResult,
    open_executor,
)
from dagrun.flow import Flow, Step, resolve_flow_inputs
from dagrun.flow_schema import DEFAULT_EXECUTOR
from dagrun.scheduler import Decisions, Scheduler
from dagrun.states import RunStatus, StepStatus
from dagrun.store.base import RunRecord, StepRecord, Store

logger = logging.getLogger(__name__)

DEFAULT_MAX_PARALLEL = 128

StepListener = Callable[[StepRecord], None]


class StepOutcome(NamedTuple):
    status: StepStatus
    attempts: int
    outputs: dict[str, Any]
    error: StepError | None


@dataclass(frozen=True, slots=True)
class RunResult:
    run_id: str
    status: RunStatus
    context: dict[str, Any]
    steps: dict[str, StepOutcome]

    def to_json(self) -> dict[str, Any]:
        """The document `dagrun run --json` prints."""
        return {
            "run_id": self.run_id,
            "status": self.status.value,
            "context": self.context,
            "steps": {
                step_id: {
                    "status": outcome.status.value,
                    "attempts": outcome.attempts,
                    "outputs": outcome.outputs,
                    "error": outcome.error.to_json() if outcome.error else None,
                }
                for step_id, outcome in self.steps.items()
            },
        }


def new_run_id() -> str:
    """Sortable by start time and readable: ``20261123-153012-4f9a2c``."""
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


class Orchestrator:
    """Runs flows against one store. Executors are named: ``local`` is always there; others are given
    as Executor objects (owned by the caller) or URLs (opened here, closed by `aclose`)."""

    def __init__(
        self,
        store: Store,
        *,
        executors: Mapping[str, Executor | str] | None = None,
        functions: Mapping[str, HostFunction] | None = None,
        processes: int | None = None,
        token: str | None = None,
    ) -> None:
        self.store = store
        self._options = ExecutorOptions(functions=dict(functions or {}), token=token, processes=processes)
        self._configured: dict[str, Executor | str] = {DEFAULT_EXECUTOR: DEFAULT_EXECUTOR, **(executors or {})}
        self._opened: dict[str, Executor] = {}
        self._closed = False

    async def __aenter__(self) -> Orchestrator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the executors opened here (not the store, not executors passed in); safe twice."""
        self._closed = True
        opened, self._opened = self._opened, {}
        for executor in reversed(opened.values()):
            await executor.aclose()

    def executor(self, name: str) -> Executor:
        """The executor called `name`, opened on first use."""
        if self._closed:
            raise RuntimeError("Orchestrator is closed")
        configured = self._configured[name]
        if not isinstance(configured, str):
            return configured
        if name not in self._opened:
            self._opened[name] = open_executor(configured, self._options)
        return self._opened[name]

    def check_executors(self, flow: Flow) -> None:
        """FlowError for steps naming an executor this orchestrator does not have."""
        problems = [
            Problem(
                f"steps[{step.index}].executor",
                f"step {step.id!r} uses executor {step.executor!r}, which is not configured "
                f"(configured: {', '.join(sorted(self._configured))}; add one with --executor NAME=URL)",
            )
            for step in flow.steps
            if step.executor not in self._configured
        ]
        if problems:
            raise FlowError(problems, source=flow.source)

    async def run(
        self,
        flow: Flow,
        *,
        inputs: Mapping[str, Any] | None = None,
        max_parallel: int = DEFAULT_MAX_PARALLEL,
        fail_fast: bool = False,
        listener: StepListener | None = None,
    ) -> RunResult:
        """Run `flow` to its end and return the outcome. Before anything is persisted: FlowError for
        unknown inputs or executor names, ExecutorError for an executor that cannot be opened. A failing
        step never raises, it fails the run."""
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, not {max_parallel}")
        flow_inputs = resolve_flow_inputs(flow, inputs or {})
        self.check_executors(flow)
        for name in {step.executor for step in flow.steps}:
            self.executor(name)  # a bad URL fails here, before anything is persisted
        run = _Run(self, flow, flow_inputs, max_parallel=max_parallel, fail_fast=fail_fast, listener=listener)
        return await run.drive()


class _Run:
    """One run being driven: the Scheduler, the ready queue, and what each step produced."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        flow: Flow,
        flow_inputs: dict[str, Any],
        *,
        max_parallel: int,
        fail_fast: bool,
        listener: StepListener | None,
    ) -> None:
        self.run_id = new_run_id()
        self._orchestrator = orchestrator
        self._store = orchestrator.store
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
        self._errors: dict[str, StepError] = {}
        self._context: dict[str, Any] = {}
        self._first_failure: str | None = None
        self._task_group: asyncio.TaskGroup | None = None

    async def drive(self) -> RunResult:
        now = time.time()
        record = RunRecord(
            self.run_id, self._flow.name, RunStatus.PENDING, self._flow.to_json(), self._flow_inputs, now
        )
        await self._store.create_run(record, list(self._steps))
        await self._store.set_run_status(self.run_id, RunStatus.RUNNING, at=now)
        logger.info("run %s of flow %r started: %d steps", self.run_id, self._flow.name, len(self._steps))
        try:
            async with asyncio.TaskGroup() as task_group:
                self._task_group = task_group
                self._ready.extend(self._scheduler.roots())
                self._pump()
        except asyncio.CancelledError:
            await asyncio.shield(self._finish_cancelled())
            raise
        except BaseExceptionGroup as group:
            # A step task raises only on a bug or a store failure; end the run failed, then surface it.
            cause = group.exceptions[0]
            await asyncio.shield(
                self._store.set_run_status(self.run_id, RunStatus.FAILED, at=time.time(), error=str(cause))
            )
            raise cause from group
        status = RunStatus.FAILED if self._first_failure else RunStatus.SUCCEEDED
        await self._store.set_run_status(self.run_id, status, at=time.time(), error=self._first_failure)
        await self._store.flush()
        logger.info("run %s ended %s", self.run_id, status)
        return self._result(status)

    def _pump(self) -> None:
        """Start ready steps while there are free slots."""
        assert self._task_group is not None
        while self._ready and len(self._running) < self._max_parallel:
            step_id = self._ready.popleft()
            self._scheduler.start(step_id)
            self._running[step_id] = self._task_group.create_task(self._run_step(self._steps[step_id]))

    async def _run_step(self, step: Step) -> None:
        status = await self._attempt_until_done(step)
        del self._running[step.id]
        decisions = self._scheduler.complete(step.id, status)
        await self._record_skips(decisions)
        if status == StepStatus.FAILED and self._fail_fast:
            await self._cancel_rest()
            return
        self._ready.extend(decisions.ready)
        self._pump()

    async def _attempt_until_done(self, step: Step) -> StepStatus:
        policy = step.retries
        while True:
            attempt = self._attempts[step.id] = self._attempts[step.id] + 1
            started_at = time.time()
            await self._record(StepRecord(self.run_id, step.id, StepStatus.RUNNING, attempt, started_at))
            result = await self._call(step, attempt)
            if result.ok:
                await self._succeed(step, attempt, started_at, result)
                return StepStatus.SUCCEEDED
            assert result.error is not None
            self._errors[step.id] = result.error
            done = attempt >= policy.max_attempts
            status = StepStatus.FAILED if done else StepStatus.READY
            delay_s = 0.0 if done else policy.delay_s(attempt)
            message = f"attempt {attempt} failed: {result.error}" + ("" if done else f"; retrying in {delay_s:.2f} s")
            await self._record(
                StepRecord(
                    self.run_id,
                    step.id,
                    status,
                    attempt,
                    started_at,
                    time.time(),
                    error=result.error,
                    logs=result.logs,
                    worker_id=result.worker_id,
                ),
                message=message,
            )
            if done:
                self._first_failure = self._first_failure or f"step {step.id!r} failed: {result.error}"
                return StepStatus.FAILED
            await asyncio.sleep(delay_s)  # the retry backoff, not a poll

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
            result = await self._orchestrator.executor(step.executor).call(request)
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
            self.run_id,
            step.id,
            StepStatus.SUCCEEDED,
            attempt,
            started_at,
            time.time(),
            result.outputs,
            None,
            result.logs,
            result.worker_id,
        )
        await self._record(record, message=message)

    async def _record(self, record: StepRecord, *, message: str = "") -> None:
        await self._store.record_step(record, message=message)
        if self._listener is not None:
            self._listener(record)

    async def _record_skips(self, decisions: Decisions) -> None:
        now = time.time()
        for step_id in decisions.skipped:
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

    async def _finish_cancelled(self) -> None:
        now = time.time()
        for step_id in self._scheduler.cancel_rest():
            record = StepRecord(self.run_id, step_id, StepStatus.CANCELLED, self._attempts[step_id], None, now)
            await self._record(record, message="run cancelled")
        await self._store.set_run_status(self.run_id, RunStatus.CANCELLED, at=now, error="cancelled")
        await self._store.flush()

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
