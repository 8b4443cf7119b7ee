"""A sub-flow step (`flow`): its flow run as a child run, `PARENT_RUN.STEP`, whose record names the step
(`parent`, 'PARENT_RUN/STEP').

The child's id is derived, not random: a driver taking the parent over finds the child it started
instead of starting a second one, and waits for it (driving it when its lease is free). The step
succeeds with the child's declared outputs when the child succeeds, and fails naming the child and its
error otherwise; it runs once (no retries). The parent's pause, resume and cancel reach its children
running at the time through `RunControl` (a child that already ended ignores them); a hand-back of the
parent hands back the children its orchestrator drives with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NamedTuple

from dagrun.contract.executor import ErrorKind, StepError
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.engine.control import RunControl, new_run_record
from dagrun.engine.mapping import StepRecorder
from dagrun.engine.step_state import StepState
from dagrun.engine.views import stored_outputs
from dagrun.errors import ControlError, FlowError, RunNotFound, UnresolvedInput
from dagrun.flow.model import Flow
from dagrun.flow.references import Outputs
from dagrun.store.base import CommandKind, RunRecord, StepRecord, Store

logger = logging.getLogger(__name__)

# The orchestrator's: the child's record once ended; it starts the child paused when `paused()` says the
# parent is, once the child exists (a pause applied before could not reach it).
RunChild = Callable[[Flow, RunRecord, Callable[[], bool]], Awaitable[RunRecord]]


def child_run_id(run_id: str, step_id: str) -> str:
    return f"{run_id}.{step_id}"


class ChildRuns(NamedTuple):
    """What an orchestrator gives its drivers for sub-flows."""

    run: RunChild  # creates the child run and drives it here, or finds it and waits for its end
    control: RunControl  # sends the parent's commands on to its children


class SubflowHost(NamedTuple):
    """What a sub-flow step needs of the driver that runs it."""

    run_id: str
    flow_inputs: Mapping[str, Any]
    outputs_of: Outputs
    record: StepRecorder
    run_child: RunChild
    store: Store  # the children's steps are read back for their outputs
    paused: Callable[[], bool]  # whether the parent is paused


async def run_subflow(state: StepState, host: SubflowHost) -> StepStatus:
    """Run the child of the sub-flow step of `state` to its end and record how the step ended: SUCCEEDED
    with the child's outputs, or FAILED (`state.error` says why)."""
    step, child = state.step, state.step.flow
    assert child is not None, f"step {step.id!r} runs no flow"
    state.attempt, state.started_at = 1, time.time()  # it runs once
    try:
        inputs = child.inputs_with(step.resolve_inputs(host.flow_inputs, host.outputs_of))
    except (UnresolvedInput, FlowError) as exc:
        return await _fail(state, host, StepError(ErrorKind.INPUT, type(exc).__name__, str(exc)))
    record = new_run_record(child_run_id(host.run_id, step.id), child, inputs, parent=f"{host.run_id}/{step.id}")
    running = StepRecord(host.run_id, step.id, StepStatus.RUNNING, 1, state.started_at)
    await host.record(running, f"child run {record.run_id}")
    ended = await host.run_child(child, record, host.paused)
    if ended.status != RunStatus.SUCCEEDED:
        message = f"child run {ended.run_id} ended {ended.status}" + (f": {ended.error}" if ended.error else "")
        return await _fail(state, host, StepError(ErrorKind.SCRIPT, "ChildRunFailed", message))
    state.outputs = await _child_outputs(child, ended, host)
    succeeded = StepRecord(host.run_id, step.id, StepStatus.SUCCEEDED, 1, state.started_at, time.time(), state.outputs)
    await host.record(succeeded, f"child run {ended.run_id} succeeded")
    return StepStatus.SUCCEEDED


async def _child_outputs(child: Flow, ended: RunRecord, host: SubflowHost) -> dict[str, Any]:
    return stored_outputs(child.outputs, await host.store.get_steps(ended.run_id))


async def _fail(state: StepState, host: SubflowHost, error: StepError) -> StepStatus:
    state.error = error
    record = StepRecord(host.run_id, state.step.id, StepStatus.FAILED, 1, state.started_at, time.time(), error=error)
    await host.record(record, str(error))
    return StepStatus.FAILED


async def tell_children(
    control: RunControl, run_id: str, flow: Flow, step_ids: Iterable[str], kind: CommandKind
) -> None:
    """Send `kind` (pause, resume, cancel) to the child runs of those of `step_ids` that run a flow; a child
    that has ended, or was never started, ignores it."""
    for step_id in step_ids:
        if flow.step(step_id).flow is None:
            continue
        child = child_run_id(run_id, step_id)
        try:
            await _COMMANDS[kind](control, child)
        except (ControlError, RunNotFound):
            continue
        logger.info("run %s: %s sent to its child run %s", run_id, kind, child)


_COMMANDS: dict[CommandKind, Callable[[RunControl, str], Awaitable[Any]]] = {
    CommandKind.PAUSE: RunControl.pause,
    CommandKind.RESUME: RunControl.resume,
    CommandKind.CANCEL: RunControl.cancel,
}
