"""What `dagrun run` reports of its steps: only what the store has made durable, and, when the store fails
or loses the run, what it can still say truthfully; after the run, what went wrong in its failed steps.

A step's record is queued for the store's writer, not yet written, when the driver tells its listener.
`DurableSteps` passes a record on (to the progress output) once a flush begun after it has returned, one
flush in flight at a time, so a line that says a step succeeded is never about a write the store lost.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from dagrun.contract.states import RunStatus, StepStatus
from dagrun.engine.control import RunControl
from dagrun.engine.outcome import RunResult, StepListener, StepOutcome
from dagrun.engine.views import StepFailure
from dagrun.errors import StoreError
from dagrun.store.base import StepRecord, Store

if TYPE_CHECKING:
    from dagrun.flow.model import Flow


class DurableSteps:
    """A listener that passes each record on to `then` once the store has made it durable."""

    def __init__(self, store: Store, then: StepListener | None) -> None:
        self._store = store
        self._then = then
        self._pending: list[StepRecord] = []  # told, not yet confirmed durable
        self._confirming: asyncio.Task[None] | None = None

    def on_step(self, record: StepRecord) -> None:
        self._pending.append(record)
        if self._confirming is None or self._confirming.done():
            self._confirming = asyncio.get_running_loop().create_task(self._confirm())

    async def drain(self) -> list[StepRecord]:
        """Wait until what was told is confirmed; the records the store failed to make durable, in order."""
        if self._confirming is not None:
            await self._confirming
        return self._pending

    async def _confirm(self) -> None:
        while self._pending:
            confirming = len(self._pending)
            try:
                await self._store.flush()
            except StoreError:  # these, and any told later, were never confirmed: `drain` says which
                return
            confirmed, self._pending = self._pending[:confirming], self._pending[confirming:]
            if self._then is not None:
                for record in confirmed:
                    self._then(record)


async def failures_of(store: Store, result: RunResult) -> list[StepFailure]:
    """The failed steps the summary after a run details (error, script line, log tail); a run that
    succeeded has none, and nothing is read for it."""
    if result.status == RunStatus.SUCCEEDED:
        return []
    return await RunControl(store).errors(result.run_id)


def not_persisted(records: list[StepRecord]) -> str:
    """One line naming the step states the store failed before confirming (the last per step, ended ones
    only): each may or may not have been written; none was reported as done."""
    under_way = (StepStatus.PENDING, StepStatus.QUEUED, StepStatus.RUNNING)  # pending again: a pause took it back
    last = {record.step_id: record for record in records if record.status not in under_way}
    states = ", ".join(f"{step_id} {record.status}" for step_id, record in last.items())
    return f"the store failed before these step states were confirmed written (not reported above): {states or 'none'}"


class StepsSeen:
    """The last record of each step `dagrun run` wrote, passed on to `then`: what it can still tell of
    its run when the store loses it."""

    def __init__(self, then: StepListener | None) -> None:
        self._records: dict[str, StepRecord] = {}
        self._then = then

    def on_step(self, record: StepRecord) -> None:
        self._records[record.step_id] = record
        if self._then is not None:
            self._then(record)

    def result(self, flow: Flow, run_id: str) -> RunResult:
        """The run as failed, each step as last seen (pending when never seen); its context is unknown."""
        steps = {}
        for step in flow.steps:
            record = self._records.get(step.id)
            steps[step.id] = (
                StepOutcome(StepStatus.PENDING, 0, {}, None)
                if record is None
                else StepOutcome(record.status, record.attempt, record.outputs, record.error)
            )
        return RunResult(run_id, RunStatus.FAILED, {}, steps)
