"""What a run gives its caller: each step record as it is written (a `StepListener`, for progress views),
and what it ended with: its status, its context, each step's outcome and the flow's declared outputs
(`dagrun run --json`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dagrun.contract.executor import StepError
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.store.base import StepRecord

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
    outputs: dict[str, Any] = field(default_factory=dict)  # the flow's declared outputs (`flow.outputs`)

    def to_json(self) -> dict[str, Any]:
        """The document `dagrun run --json` prints."""
        return {
            "run_id": self.run_id,
            "status": self.status.value,
            "context": self.context,
            "outputs": self.outputs,
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
