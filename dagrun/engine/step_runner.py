"""A script step's attempts, until it succeeds or fails for good: each attempt recorded `queued`, then
`running` when its executor says it started, then its result; a failed attempt retried after its backoff;
an attempt a pause took back before a worker did is `pending` again (`ready` for a retry) and waits out the
pause. The run's shared context lives here: a succeeded attempt's context operations are applied to it, and
those applied are recorded as its context writes.

The driver runs each script step through `until_done`, and a mapped step each of its instances (`mapping`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from dagrun.contract.context import ContextOp
from dagrun.contract.dispatch import Dispatch, Withdrawn
from dagrun.contract.executor import Executor, StepResult
from dagrun.contract.states import StepStatus
from dagrun.engine.attempt import run_attempt
from dagrun.engine.pause import PauseGate
from dagrun.engine.policy import attempt_failed_message, retry_delay_s
from dagrun.engine.step_state import StepState
from dagrun.flow.references import Outputs
from dagrun.store.base import RunWriter, StepRecord

WITHDRAWN = "withdrawn before a worker took it: the run is paused"

Write = Coroutine[Any, Any, None]
Record = Callable[[StepRecord, str], Write]  # writes a record with its event message
Spawn = Callable[[Write], "asyncio.Task[None]"]


class StepRunner:
    def __init__(
        self,
        store: RunWriter,
        executor_of: Callable[[str], Executor],
        run_id: str,
        flow_inputs: Mapping[str, Any],
        outputs_of: Outputs,
        *,
        gate: PauseGate,
        record: Record,
        spawn: Spawn,
    ) -> None:
        self._store = store
        self._executor_of = executor_of
        self._run_id = run_id
        self._flow_inputs = flow_inputs
        self._outputs_of = outputs_of
        self._gate = gate
        self._record = record
        self._spawn = spawn  # a task in the run's TaskGroup
        self.context: dict[str, Any] = {}

    async def until_done(self, state: StepState) -> StepStatus:
        """SUCCEEDED (`state.outputs` set) or FAILED (`state.error` says why), recorded."""
        while True:
            await self._gate.wait_open()  # a retry, or an attempt a pause withdrew, waits out the pause
            result = await self._attempt(state)
            if result is None:
                continue
            if result.ok:
                await self._succeed(state, result)
                return StepStatus.SUCCEEDED
            delay_s = await self._fail_attempt(state, result)
            if delay_s is None:
                return StepStatus.FAILED
            await asyncio.sleep(delay_s)  # the retry backoff, not a poll

    async def _attempt(self, state: StepState) -> StepResult | None:
        """One attempt: queued, then running when its executor says it started. None when a pause withdrew
        it before a worker took it: it is pending again, and its number is the next attempt's."""
        step = state.step
        attempt = state.begin_attempt()
        await self._record(StepRecord(self._run_id, step.id, StepStatus.QUEUED, attempt, queued_at=state.queued_at), "")
        state.dispatch = dispatch = Dispatch(functools.partial(self._started, state))
        if self._gate.is_closed:  # paused while it was recorded
            dispatch.withdraw()
        try:
            result = await run_attempt(
                step, attempt, run_id=self._run_id, flow_inputs=self._flow_inputs, outputs_of=self._outputs_of,
                context=self.context, executor_of=self._executor_of, dispatch=dispatch, item=state.item,
            )  # fmt: skip
        except Withdrawn:  # pending again; a retry waits for its retry again (its failures still count)
            state.take_back_attempt()
            status = StepStatus.READY if state.failures else StepStatus.PENDING
            await self._record(StepRecord(self._run_id, step.id, status, state.attempt), WITHDRAWN)
            return None
        finally:
            state.dispatch = None
        if state.started_write is not None:  # its running record goes before its result's
            await state.started_write
            state.started_write = None
        return result

    def _started(self, state: StepState, at: float) -> None:
        """The executor started the step's attempt: record it running (the step's task awaits the write)."""
        state.started_at = at
        record = StepRecord(
            self._run_id, state.step.id, StepStatus.RUNNING, state.attempt, at, queued_at=state.queued_at
        )
        state.started_write = self._spawn(self._record(record, ""))

    async def _succeed(self, state: StepState, result: StepResult) -> None:
        message = ""
        written: tuple[ContextOp, ...] = ()  # the attempt's context writes, as the store applied them
        if result.context_ops:
            self.context, written, rejected = await self._store.apply_context(self._run_id, result.context_ops)
            message = "; ".join(rejected)
        state.outputs = result.outputs
        state.error = None
        now = time.time()
        record = StepRecord(
            self._run_id, state.step.id, StepStatus.SUCCEEDED, state.attempt, state.started(now, result), now,
            result.outputs, None, result.logs, result.worker_id, result.elapsed_ms, state.queued_at, written,
        )  # fmt: skip
        await self._record(record, message)

    async def _fail_attempt(self, state: StepState, result: StepResult) -> float | None:
        """Record a failed attempt; how long to wait before the next one, None when the step has failed."""
        assert result.error is not None
        state.error = result.error
        state.failures += 1
        delay_s = retry_delay_s(state.step.retries, state.failures)
        now = time.time()
        record = StepRecord(
            self._run_id, state.step.id, StepStatus.FAILED if delay_s is None else StepStatus.READY, state.attempt,
            state.started(now, result), now, error=result.error, logs=result.logs, worker_id=result.worker_id,
            elapsed_ms=result.elapsed_ms, queued_at=state.queued_at,
        )  # fmt: skip
        await self._record(record, attempt_failed_message(state.attempt, result.error, delay_s))
        return delay_s
