"""A step that runs no script but waits for a signal (`wait_for`): `waiting` until a signal brings its
fields, or failed at its timeout. A run taken over keeps waiting where the last driver was: its stored
`waiting` record is told to the listener, not written again."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from dagrun.contract.executor import ErrorKind, StepError
from dagrun.contract.states import StepStatus
from dagrun.engine.outcome import StepListener
from dagrun.engine.step_state import StepState
from dagrun.flow.model import WaitFor
from dagrun.store.base import StepRecord

Record = Callable[[StepRecord, str], Awaitable[None]]  # writes a record with its event message


async def wait_for_signal(
    state: StepState, *, run_id: str, record: Record, listener: StepListener | None
) -> StepStatus:
    """Wait for the signal of the step (one with `wait_for`) and record how the wait ended: SUCCEEDED with the
    signalled fields as its outputs, or FAILED (`state.error` says why)."""
    wait_for = state.step.wait_for
    assert wait_for is not None, f"step {state.step.id!r} waits for no signal"
    await _begin_waiting(state, wait_for, run_id=run_id, record=record, listener=listener)
    try:
        values = await state.receive_signal()
    except TimeoutError:
        state.error = StepError(ErrorKind.TIMEOUT, "SignalTimeout", f"no signal within {wait_for.timeout_s:g} s")
        failed = StepRecord(
            run_id, state.step.id, StepStatus.FAILED, state.attempt, state.started_at, time.time(), error=state.error
        )
        await record(failed, str(state.error))
        return StepStatus.FAILED
    state.outputs = {field: values.get(field) for field in wait_for.fields}
    succeeded = StepRecord(
        run_id, state.step.id, StepStatus.SUCCEEDED, state.attempt, state.started_at, time.time(), state.outputs
    )
    await record(succeeded, "signalled")
    return StepStatus.SUCCEEDED


async def _begin_waiting(
    state: StepState, wait_for: WaitFor, *, run_id: str, record: Record, listener: StepListener | None
) -> None:
    resumed, state.resumed = state.resumed, None
    if resumed is not None and resumed.started_at is not None:  # keep waiting where the last driver was
        attempt, started_at = resumed.attempt, resumed.started_at
        if listener is not None:  # already recorded as waiting: told, not written again
            listener(resumed)
    else:
        attempt, started_at = state.attempt + 1, time.time()
        waiting = StepRecord(run_id, state.step.id, StepStatus.WAITING, attempt, started_at)
        await record(waiting, f"waiting for a signal with {', '.join(wait_for.fields)}")
    state.attempt, state.started_at = attempt, started_at
    state.deadline = None if wait_for.timeout_s is None else started_at + wait_for.timeout_s
