"""Taking a run over from its stored state (crash recovery, `resume`, a rerun's reused steps): what each
step's record says, and what follows from it for the Scheduler. A step recorded skipped by its condition
stays skipped, a clean skip, and is not run; one whose condition was never recorded is decided again."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from dagrun.contract.states import StepStatus
from dagrun.engine.scheduler import Scheduler
from dagrun.engine.step_state import StepState
from dagrun.store.base import StepRecord


class StoredRun(NamedTuple):
    """What a driver taking a run over reads back from the store (commands are read by `drive`)."""

    steps: list[StepRecord]
    context: dict[str, Any]


class TakenOver(NamedTuple):
    ready: list[str]  # the steps to start
    unrecorded_skips: list[str]  # skips that follow from the stored states but were never written
    unrecorded_cancels: list[str]  # fail fast: steps a stored failure cancels, not yet written so
    failed: list[StepState]  # the steps that failed, in flow order


def take_over(
    states: Mapping[str, StepState], scheduler: Scheduler, stored: StoredRun, *, fail_fast: bool
) -> TakenOver:
    """Restore each StepState from its record and replay the ended steps into `scheduler`. In a fail-fast
    run with a failure, the failure's cancellations are applied again (a driver may have died between the
    failure and writing them, or while the clean-up steps ran)."""
    records = {record.step_id: record for record in stored.steps}
    ended: dict[str, StepStatus] = {}
    failed: list[StepState] = []
    for step_id, state in states.items():
        status = state.restore(records[step_id])
        if status.is_terminal and status != StepStatus.CANCELLED:  # the Scheduler replays what it reaches
            ended[step_id] = status
        if status == StepStatus.FAILED:
            failed.append(state)
    decisions = scheduler.restore(ended)
    ready, skipped, cancels = decisions.ready, decisions.skipped, []
    if fail_fast and failed:
        cancelled, unlocked = scheduler.fail_fast()
        dropped = set(cancelled)
        ready = [step_id for step_id in ready if step_id not in dropped] + unlocked.ready
        skipped = skipped + unlocked.skipped
        cancels = [step_id for step_id in cancelled if records[step_id].status != StepStatus.CANCELLED]
    skips = [step_id for step_id in skipped if records[step_id].status != StepStatus.SKIPPED]
    return TakenOver(ready, skips, cancels, failed)
