"""A step's condition (`when`), decided when its run_if is met and before it is dispatched or waits.

False: the step is recorded `skipped` and is a clean skip for the Scheduler (not caused by a failure):
the `all_success` steps after it are skipped, `all_done` ones run, `any_failed` ones are not run by it.
A value the condition cannot judge fails the step without an attempt, with an `input` error like an input
that cannot be resolved. A driver taking a run over decides a step whose condition was never recorded
again from the stored outputs, so it decides the same way (`takeover` keeps a recorded skip).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from dagrun.contract.executor import ErrorKind, StepError
from dagrun.contract.states import StepStatus
from dagrun.engine.step_state import StepState
from dagrun.engine.waiting_step import Record
from dagrun.errors import UnresolvedInput
from dagrun.flow.references import Outputs
from dagrun.store.base import StepRecord

logger = logging.getLogger(__name__)


async def decide_condition(
    state: StepState, *, run_id: str, flow_inputs: Mapping[str, Any], outputs_of: Outputs, record: Record
) -> StepStatus | None:
    """None when the step goes on (it has no condition, or its condition holds); else how it ended, recorded:
    SKIPPED when its condition is false, FAILED (`state.error` says why) when it cannot be judged."""
    condition = state.step.condition
    if condition is None:
        return None
    try:
        if condition.holds(flow_inputs, outputs_of):
            return None
    except UnresolvedInput as exc:
        logger.info("run %s step %s: %s", run_id, state.step.id, exc)
        state.error = StepError(ErrorKind.INPUT, "UnresolvedInput", str(exc))
        failed = StepRecord(
            run_id, state.step.id, StepStatus.FAILED, state.attempt, None, time.time(), error=state.error
        )
        await record(failed, str(state.error))
        return StepStatus.FAILED
    skipped = StepRecord(run_id, state.step.id, StepStatus.SKIPPED, state.attempt, None, time.time())
    await record(skipped, f"condition {condition.text} is false")
    return StepStatus.SKIPPED
