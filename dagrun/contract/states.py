"""Run and step states, and the trigger rules that decide whether a step runs.

The enum values are the strings stored in every store and sent on every wire.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_RUN


class StepStatus(StrEnum):
    PENDING = "pending"
    READY = "ready"  # waiting to be tried again after a failed attempt
    QUEUED = "queued"  # handed to an executor, not yet started by a worker or sandbox process
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    REUSED = "reused"  # a rerun took its outputs from the run it reruns, where it succeeded; it did not run
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_STEP

    @property
    def has_outputs(self) -> bool:
        """It ended with outputs its dependents may use: it succeeded, here or in the run a rerun reuses."""
        return self in _WITH_OUTPUTS


class RunIf(StrEnum):
    """When a step runs, given how its dependencies ended."""

    ALL_SUCCESS = "all_success"  # every dependency succeeded
    ALL_DONE = "all_done"  # every dependency ended, however
    ANY_FAILED = "any_failed"  # at least one dependency failed (or was skipped because of a failure)


_TERMINAL_RUN = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
_WITH_OUTPUTS = frozenset({StepStatus.SUCCEEDED, StepStatus.REUSED})
_TERMINAL_STEP = _WITH_OUTPUTS | {StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED}
