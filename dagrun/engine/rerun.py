"""Rerun from failure: a new run of an ended run's flow that reuses what succeeded and runs the rest.

Like Airflow's "clear downstream" or Temporal's reset. The steps that run again are those that failed or
were cancelled in the origin (or never ended: its driver could not drive it), those named in `from_steps`,
those whose inputs or condition refer to a flow input the rerun gives another value, and every step
downstream of these. Every other step that succeeded in the origin (or was reused there) is recorded
`reused`, with the origin's outputs, in the same store write that creates the run, so a rerun is never half
made; one that was skipped is decided again by its trigger rule and its condition (which skip it again,
since nothing they read changed). The rerun is then driven, resumed after a crash and controlled like any
run. It starts with the context the origin ended with (a failed attempt's context writes were never
applied), and its record names the origin (`rerun_of`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from dagrun.contract.states import StepStatus
from dagrun.engine.control import new_run_id, new_run_record
from dagrun.engine.stored_flow import flow_of
from dagrun.errors import ControlError
from dagrun.flow.graph import downstream, placed_references
from dagrun.flow.model import Flow
from dagrun.flow.references import Reference
from dagrun.store.base import Reuse, RunReader, RunRecord, StepRecord, Store

logger = logging.getLogger(__name__)


class Rerun(NamedTuple):
    """A rerun ready to be created (`create_run(record, step_ids, reuse)`) and driven (`flow`)."""

    flow: Flow
    record: RunRecord
    step_ids: list[str]
    reuse: Reuse

    @property
    def again(self) -> list[str]:
        """The steps that run again, in flow order."""
        reused = {step.step_id for step in self.reuse.steps}
        return [step_id for step_id in self.step_ids if step_id not in reused]


async def plan_rerun(
    store: RunReader, origin_id: str, *, from_steps: Sequence[str] = (), inputs: Mapping[str, Any] | None = None
) -> Rerun:
    """The rerun of run `origin_id`; nothing is written. ControlError when the origin has not ended, names
    a step it does not have, or leaves nothing to run again; FlowError for inputs the flow does not declare."""
    origin = await store.get_run(origin_id)
    if not origin.status.is_terminal:
        raise ControlError(origin_id, f"it is still {origin.status}; a rerun starts from a run that has ended")
    flow = await asyncio.to_thread(flow_of, origin)  # parsing compiles every script: not on the loop
    flow_inputs = {**origin.inputs, **inputs} if inputs else dict(origin.inputs)
    flow.inputs_with(inputs or {})  # FlowError for an input the flow does not declare
    steps = await store.get_steps(origin_id)
    again = downstream(flow, _starting_points(flow, origin, steps, from_steps, flow_inputs))
    if not again:
        raise ControlError(origin_id, "it succeeded and nothing was named to run again (--from STEP)")
    run_id = new_run_id()
    flow_ids = {step.id for step in flow.steps}  # not the instances of its mapped steps
    reused = [
        StepRecord(run_id, step.step_id, StepStatus.REUSED, outputs=step.outputs)
        for step in steps
        if step.status.has_outputs and step.step_id not in again and step.step_id in flow_ids
    ]  # a mapped step is reused whole (its outputs hold its lists), or run again whole
    record = new_run_record(run_id, flow, flow_inputs, rerun_of=origin_id)
    context = await store.get_context(origin_id)
    return Rerun(flow, record, [step.id for step in flow.steps], Reuse(reused, context))


async def submit_rerun(
    store: Store,
    origin_id: str,
    *,
    from_steps: Sequence[str] = (),
    inputs: Mapping[str, Any] | None = None,
    check_flow: Callable[[Flow], None] | None = None,
) -> str:
    """Record the rerun of run `origin_id` for an orchestrator sharing the store to drive (as
    `RunControl.submit` records a run); return its id. Raises like `plan_rerun`, and as `check_flow` does
    before anything is recorded."""
    rerun = await plan_rerun(store, origin_id, from_steps=from_steps, inputs=inputs)
    if check_flow is not None:
        check_flow(rerun.flow)
    await store.create_run(rerun.record, rerun.step_ids, rerun.reuse)
    await store.flush()
    logger.info("run %s submitted: a rerun of run %s", rerun.record.run_id, origin_id)
    return rerun.record.run_id


def _starting_points(
    flow: Flow, origin: RunRecord, steps: Sequence[StepRecord], from_steps: Sequence[str], flow_inputs: dict[str, Any]
) -> set[str]:
    known = {step.id for step in flow.steps}
    unknown = [step_id for step_id in from_steps if step_id not in known]
    if unknown:
        listed = ", ".join(step.id for step in flow.steps[:_LISTED_STEPS]) + (
            ", ..." if len(flow.steps) > _LISTED_STEPS else ""
        )
        raise ControlError(origin.run_id, f"it has no step {unknown[0]!r} (steps: {listed})")
    changed = {name for name, value in flow_inputs.items() if origin.inputs.get(name, _ABSENT) != value}
    return (
        set(from_steps)
        | {step.step_id for step in steps if not (step.status.has_outputs or step.status == StepStatus.SKIPPED)}
        | {
            step.id
            for step in flow.steps
            if any(_reads(reference, changed) for _, reference in placed_references(step))
        }
    )


def _reads(reference: Reference, flow_inputs: set[str]) -> bool:
    return reference.step_id is None and reference.key in flow_inputs


_ABSENT = object()
_LISTED_STEPS = 20
