"""What a failure leads to, as rules the driver asks rather than branches inside it: whether a failed
attempt is tried again and after how long (the step's RetryPolicy), and what a failed step stops in its
run (fail fast: every step that has not ended, running ones included, but the clean-up steps)."""

from __future__ import annotations

from dagrun.contract.executor import StepError
from dagrun.contract.states import StepStatus
from dagrun.engine.scheduler import Decisions, Scheduler
from dagrun.flow.model import RetryPolicy


def retry_delay_s(retries: RetryPolicy, failures: int) -> float | None:
    """Seconds to wait before the next attempt of a step whose attempts failed `failures` times; None when
    it has had all its attempts, so it has failed."""
    if failures >= retries.max_attempts:
        return None
    return retries.delay_s(failures)


def attempt_failed_message(attempt: int, error: StepError, delay_s: float | None) -> str:
    """The event message of a failed attempt: what failed and, when it is tried again, when."""
    retrying = "" if delay_s is None else f"; retrying in {delay_s:.2f} s"
    return f"attempt {attempt} failed: {error}{retrying}"


def step_failure(step_id: str, error: StepError | None) -> str:
    """A run's error when the step `step_id` failed (the first step to fail names the run's)."""
    return f"step {step_id!r} failed: {error}"


def cancelled_by(status: StepStatus, scheduler: Scheduler, *, fail_fast: bool) -> tuple[list[str], Decisions]:
    """The steps a step that ended `status` cancels, and what that unlocks: in a fail-fast run, a failure
    cancels every step that has not ended, running ones included, but the clean-up steps (`any_failed`,
    `all_done`), which run or are skipped as their rule says (`Scheduler.fail_fast`); otherwise none."""
    if not fail_fast or status != StepStatus.FAILED:
        return [], Decisions()
    return scheduler.fail_fast()
