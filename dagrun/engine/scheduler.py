"""Which steps may start: in-degree counters; a step is decided when its counter reaches 0.

Pure and synchronous (no I/O, no clock), so the orchestrator stays thin and the rules are property
tested on their own. Each completion costs O(its out-degree), so a whole run is O(steps + edges).
When a step is decided, its `run_if` says whether it becomes ready or is skipped; a skip completes
the step at once and is propagated with an explicit stack (chains can be long).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dagrun.contract.states import RunIf, StepStatus
from dagrun.flow.model import Flow

# Besides succeeding: how a step that its run_if let start can have ended (SKIPPED: its condition was false).
_REPLAYED_ENDS = frozenset({StepStatus.FAILED, StepStatus.SKIPPED})


@dataclass(slots=True)
class Decisions:
    """What one completion unlocked: steps to start now, steps skipped because of their run_if."""

    ready: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(self, flow: Flow) -> None:
        self._run_if = {step.id: step.run_if for step in flow.steps}
        self._depends_on = {step.id: step.depends_on for step in flow.steps}
        self._dependents: dict[str, list[str]] = {step.id: [] for step in flow.steps}
        for step in flow.steps:
            for dependency in step.depends_on:
                self._dependents[dependency].append(step.id)
        self._waiting_on = {step.id: len(step.depends_on) for step in flow.steps}
        self.status: dict[str, StepStatus] = {step.id: StepStatus.PENDING for step in flow.steps}
        # A step is tainted when it failed, was cancelled, or was skipped because of a failure upstream:
        # `any_failed` steps run after a taint, `all_success` steps are skipped by one.
        self._tainted: set[str] = set()
        self._roots = [step_id for step_id, dependencies in self._depends_on.items() if not dependencies]

    def roots(self) -> list[str]:
        """The steps that are ready at the start: those without dependencies."""
        return list(self._roots)

    def start(self, step_id: str) -> None:
        self.status[step_id] = StepStatus.RUNNING

    def complete(self, step_id: str, status: StepStatus) -> Decisions:
        """Record that a step ended; return what that unlocks. ValueError for a step ended twice."""
        decisions = Decisions()
        self._apply(step_id, status, decisions)
        return decisions

    def restore(self, ended: Mapping[str, StepStatus]) -> Decisions:
        """Replay a run driven before: `ended` holds the steps that succeeded (or were reused), failed, or
        were skipped by their condition. Completions are replayed in dependency order, so a step is reached only
        as the rules allow (a step skipped by its run_if is not reached: its skip follows again); returns the
        steps to run now and the skips that follow (whether they were recorded before or not)."""
        decisions = Decisions()
        frontier = self.roots()
        while frontier:
            step_id = frontier.pop()
            status = ended.get(step_id)
            if status is not None and (status.has_outputs or status in _REPLAYED_ENDS):
                self.start(step_id)
                unlocked = self.complete(step_id, status)
                frontier.extend(unlocked.ready)
                decisions.skipped.extend(unlocked.skipped)
            else:
                decisions.ready.append(step_id)
        return decisions

    def cancel_rest(self) -> list[str]:
        """Mark every step that has not ended as cancelled; return them (running ones included)."""
        cancelled = [step_id for step_id, status in self.status.items() if not status.is_terminal]
        for step_id in cancelled:
            self.status[step_id] = StepStatus.CANCELLED
            self._tainted.add(step_id)
        return cancelled

    def fail_fast(self) -> tuple[list[str], Decisions]:
        """After a failure in a fail-fast run: mark every step that has not ended cancelled (running ones
        included) but the clean-up steps (a `run_if` other than all_success), which are decided as their
        rule says, a cancelled step counting as a failure. Returns the cancelled steps and what their ends
        unlock."""
        cancelled = [
            step_id
            for step_id, status in self.status.items()
            if not status.is_terminal and self._run_if[step_id] == RunIf.ALL_SUCCESS
        ]
        for step_id in cancelled:
            self.status[step_id] = StepStatus.CANCELLED
            self._tainted.add(step_id)
        decisions = Decisions()
        stack: list[tuple[str, StepStatus]] = []
        for step_id in cancelled:
            self._decide_dependents(step_id, decisions, stack)
        self._settle(stack, decisions)
        return cancelled, decisions

    def _apply(self, step_id: str, status: StepStatus, decisions: Decisions) -> None:
        if not status.is_terminal:
            raise ValueError(f"step {step_id!r}: {status} is not a final state")
        self._settle([(step_id, status)], decisions)

    def _settle(self, stack: list[tuple[str, StepStatus]], decisions: Decisions) -> None:
        """End the steps on `stack` and decide their dependents; a skip ends its step at once (pushed)."""
        while stack:
            current, current_status = stack.pop()
            if self.status[current].is_terminal:
                raise ValueError(f"step {current!r} already ended as {self.status[current]}")
            self.status[current] = current_status
            if current_status in (StepStatus.FAILED, StepStatus.CANCELLED):
                self._tainted.add(current)
            self._decide_dependents(current, decisions, stack)

    def _decide_dependents(self, step_id: str, decisions: Decisions, stack: list[tuple[str, StepStatus]]) -> None:
        for dependent in self._dependents[step_id]:
            self._waiting_on[dependent] -= 1
            if self._waiting_on[dependent] == 0 and self.status[dependent] == StepStatus.PENDING:
                if self._should_run(dependent):
                    decisions.ready.append(dependent)
                else:
                    if self._is_tainted_upstream(dependent):
                        self._tainted.add(dependent)
                    decisions.skipped.append(dependent)
                    stack.append((dependent, StepStatus.SKIPPED))

    def _should_run(self, step_id: str) -> bool:
        rule = self._run_if[step_id]
        if rule == RunIf.ALL_DONE:
            return True
        if rule == RunIf.ANY_FAILED:
            return self._is_tainted_upstream(step_id)
        return all(self.status[dependency].has_outputs for dependency in self._depends_on[step_id])

    def _is_tainted_upstream(self, step_id: str) -> bool:
        return any(dependency in self._tainted for dependency in self._depends_on[step_id])
