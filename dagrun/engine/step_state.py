"""One step of a run being driven, in one record (like graphlib's `_NodeInfo`): its attempts, what it
produced, its current attempt's timings and deadline, and its signal mailbox. Where it stands in the
flow (pending, running, ended how) is the Scheduler's to keep, not this record's.

A signal may come before or while its step waits: one that comes first is kept for it. The first signal
counts and later ones are ignored (a run taken over replays every signal in its command log, so this is
also what makes replay idempotent).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from typing import Any

from dagrun.contract.dispatch import Dispatch
from dagrun.contract.executor import StepError, StepResult
from dagrun.contract.states import StepStatus
from dagrun.engine.outcome import StepOutcome
from dagrun.flow.model import Step
from dagrun.store.base import StepRecord


class StepState:
    __slots__ = (
        "attempt", "deadline", "dispatch", "error", "failures", "item", "outputs", "queued_at", "resumed", "signal",
        "signal_waiter", "started_at", "started_write", "step", "task",
    )  # fmt: skip

    def __init__(self, step: Step) -> None:
        self.step = step
        self.attempt = 0  # the last attempt started; 0 before the first
        self.failures = 0  # failed attempts; an attempt that was cut off (its driver stopped) is not one
        self.outputs: dict[str, Any] | None = None  # set once it succeeded
        self.error: StepError | None = None  # its last failed attempt's, until an attempt succeeds
        self.queued_at: float | None = None  # when its current attempt was handed to its executor
        self.started_at: float | None = None  # when its current attempt started (or it began waiting)
        self.dispatch: Dispatch | None = None  # its current attempt's link with its executor, while it runs
        self.started_write: asyncio.Task[None] | None = None  # recording that the current attempt started
        self.deadline: float | None = None  # a waiting step's: when it fails unless signalled (None: never)
        self.resumed: StepRecord | None = None  # the stored record of a step that waited when the run was taken over
        self.task: asyncio.Task[None] | None = None  # while it runs
        self.signal: dict[str, Any] | None = None  # a signal that came before its step waited
        self.signal_waiter: asyncio.Future[dict[str, Any]] | None = None  # while it waits
        self.item: dict[str, Any] | None = None  # a map instance's item, as the input its map names

    def restore(self, record: StepRecord) -> StepStatus:
        """Take up the step as stored by the driver before; its stored status."""
        self.attempt = record.attempt
        if record.status.has_outputs:
            self.outputs = record.outputs
        if record.error is not None:
            self.error = record.error
        self.failures = failed_attempts(record)
        if record.status == StepStatus.WAITING:
            self.resumed = record
        return record.status

    def outcome(self, status: StepStatus) -> StepOutcome:
        """What the step ended with, in a run's result; `status` is the Scheduler's."""
        return StepOutcome(status, self.attempt, self.outputs if self.outputs is not None else {}, self.error)

    def begin_attempt(self) -> int:
        """A new attempt, queued from now until its executor says it started."""
        self.attempt += 1
        self.queued_at, self.started_at = time.time(), None
        return self.attempt

    def started(self, now: float, result: StepResult) -> float:
        """When the current attempt started: as its executor said, else (it said nothing before the result)
        as long before `now` as the result says it ran, but not before it was queued."""
        if self.started_at is None:
            ran_from = now - result.elapsed_ms / 1000
            self.started_at = ran_from if self.queued_at is None else max(self.queued_at, ran_from)
        return self.started_at

    def take_back_attempt(self) -> None:
        """The current attempt was withdrawn unrun: the next one has its number."""
        self.attempt -= 1
        self.queued_at = self.started_at = None

    def deliver_signal(self, values: dict[str, Any]) -> None:
        """Hand a signal to the step waiting for it, or keep it (only the first) until it waits."""
        waiter = self.signal_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(values)
        elif self.signal is None:
            self.signal = values

    async def receive_signal(self) -> dict[str, Any]:
        """The step's signal values, waiting up to its deadline; TimeoutError after."""
        kept, self.signal = self.signal, None
        if kept is not None:
            return kept
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.signal_waiter = waiter
        try:
            async with asyncio.timeout(None if self.deadline is None else self.deadline - time.time()):
                return await waiter
        finally:
            self.signal_waiter = None


def failed_attempts(record: StepRecord) -> int:
    """How many of a stored step's attempts failed: all of them when it failed or waits to retry (READY
    after a failure), all but the last when the last was cut off (QUEUED, RUNNING, WAITING)."""
    if record.status in (StepStatus.FAILED, StepStatus.READY):
        return record.attempt
    return max(record.attempt - 1, 0)


class SucceededOutputs(Mapping[str, Mapping[str, Any]]):
    """Step id -> outputs of the steps that succeeded: what references to other steps' outputs read."""

    __slots__ = ("_states",)

    def __init__(self, states: Mapping[str, StepState]) -> None:
        self._states = states

    def __getitem__(self, step_id: str) -> Mapping[str, Any]:
        outputs = self._states[step_id].outputs
        if outputs is None:
            raise KeyError(step_id)
        return outputs

    def __iter__(self) -> Iterator[str]:
        return (step_id for step_id, state in self._states.items() if state.outputs is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)
