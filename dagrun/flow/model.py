"""Flows and steps as the rest of dagrun sees them: validated, frozen, scripts read in.

Pure: no I/O, no asyncio, no globals. A Flow comes from `dagrun.flow.parser.parse_flow`, which checks
that its dependencies form a DAG and that its references all point at ancestors.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dagrun.contract.states import RunIf
from dagrun.errors import FlowError, Problem
from dagrun.flow.problems import value_findings
from dagrun.flow.references import CompiledInputs, Outputs, format_location
from dagrun.flow.schema import DEFAULT_CONTEXT_ID, DEFAULT_EXECUTOR, DEFAULT_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most `max_attempts` attempts; the wait before attempt n+1 is backoff_s * 2**(n-1), capped."""

    max_attempts: int = 1
    backoff_s: float = 0.0
    max_backoff_s: float = 60.0
    jitter: bool = False

    def delay_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based); with jitter, in [delay/2, delay]."""
        # the exponent is capped so that a huge attempt number cannot overflow a float
        delay = min(self.max_backoff_s, self.backoff_s * 2.0 ** min(attempt - 1, 1000))
        return delay * (0.5 + rand() / 2) if self.jitter else delay


@dataclass(frozen=True, slots=True)
class WaitFor:
    """What a step that runs no script waits for: a signal providing `fields`, within `timeout_s` if set."""

    fields: tuple[str, ...]  # distinct; they are the step's declared outputs
    timeout_s: float | None = None  # None: it waits as long as it takes

    def to_json(self) -> dict[str, Any]:
        """The `wait_for` object as flow JSON; without `timeout_s` when it waits indefinitely."""
        document: dict[str, Any] = {"fields": list(self.fields)}
        if self.timeout_s is not None:
            document["timeout_s"] = self.timeout_s
        return document


@dataclass(frozen=True, slots=True)
class Step:
    """One step. With `wait_for` it runs no script and waits for a signal instead: its script and
    script_hash are "", its outputs are wait_for.fields, its inputs are empty, and executor, context_id,
    timeout_s and retries keep their defaults (its deadline is wait_for.timeout_s)."""

    id: str
    index: int  # position in the flow's `steps` list, for messages (`steps[3]`)
    script: str  # the source, inline or read from script_file
    script_hash: str
    depends_on: tuple[str, ...] = ()
    inputs: Mapping[str, Any] = field(default_factory=dict)  # raw values; may hold ${...} references
    outputs: tuple[str, ...] | None = None  # declared output keys: the step's contract, when given
    run_if: RunIf = RunIf.ALL_SUCCESS
    executor: str = DEFAULT_EXECUTOR
    context_id: str = DEFAULT_CONTEXT_ID
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    # as written in the flow, for messages; not compared, since to_json() inlines the script
    script_file: str | None = field(default=None, compare=False)
    description: str = ""
    wait_for: WaitFor | None = None
    _compiled: CompiledInputs | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def compiled_inputs(self) -> CompiledInputs:
        """The inputs compiled for resolution, built on first use and kept."""
        compiled = self._compiled
        if compiled is None:
            compiled = CompiledInputs(self.inputs, step_id=self.id)  # validation reports its malformed ones
            object.__setattr__(self, "_compiled", compiled)  # a cache, not state: same result every time
        return compiled

    def resolve_inputs(self, flow_inputs: Mapping[str, Any], outputs_of: Outputs) -> dict[str, Any]:
        """The inputs with references replaced (see CompiledInputs.resolve); raises UnresolvedInput."""
        return self.compiled_inputs.resolve(flow_inputs, outputs_of)

    def to_json(self) -> dict[str, Any]:
        """The step as flow JSON, every inherited field spelled out and the script inlined; a step that
        waits for a signal has none of the fields about a script."""
        body = {"wait_for": self.wait_for.to_json()} if self.wait_for is not None else {"script": self.script}
        document: dict[str, Any] = {"id": self.id, **body}
        if self.description:
            document["description"] = self.description
        if self.depends_on:
            document["depends_on"] = list(self.depends_on)
        if self.wait_for is not None:
            return document | {"run_if": self.run_if.value}
        if self.inputs:
            document["inputs"] = dict(self.inputs)
        if self.outputs is not None:
            document["outputs"] = list(self.outputs)
        retries = self.retries
        document |= {
            "run_if": self.run_if.value,
            "executor": self.executor,
            "context_id": self.context_id,
            "timeout_s": self.timeout_s,
            "retries": {
                "max_attempts": retries.max_attempts,
                "backoff_s": retries.backoff_s,
                "max_backoff_s": retries.max_backoff_s,
                "jitter": retries.jitter,
            },
        }
        return document


@dataclass(frozen=True, slots=True)
class Flow:
    name: str
    steps: tuple[Step, ...]  # in file order
    inputs: Mapping[str, Any] = field(default_factory=dict)  # declared flow inputs with their defaults
    description: str = ""
    source: str = field(default="<flow>", compare=False)  # the file it came from, for messages
    # The document it was parsed from, scripts inlined: to_json() for free (it is persisted with each run).
    document: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    _by_id: dict[str, Step] | None = field(default=None, init=False, repr=False, compare=False)

    def step(self, step_id: str) -> Step:
        """The step with that id, in O(1); KeyError when there is none."""
        by_id = self._by_id
        if by_id is None:
            by_id = {step.id: step for step in reversed(self.steps)}  # the first of duplicates wins
            object.__setattr__(self, "_by_id", by_id)  # a cache of an immutable value
        return by_id[step_id]

    def to_json(self) -> dict[str, Any]:
        """The flow as a JSON document, scripts inlined; `parse_flow` reads it back to an equal Flow."""
        if self.document is not None:
            return dict(self.document)
        document: dict[str, Any] = {"name": self.name}
        if self.description:
            document["description"] = self.description
        if self.inputs:
            document["inputs"] = dict(self.inputs)
        document["steps"] = [step.to_json() for step in self.steps]
        return document


def resolve_flow_inputs(flow: Flow, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The flow's inputs: its declared defaults, overridden by `overrides`. FlowError for a name the flow
    does not declare, or a value that is not JSON."""
    problems: list[Problem] = []
    declared = ", ".join(sorted(flow.inputs)) or "none"
    for name, value in overrides.items():
        if name not in flow.inputs:
            problems.append(
                Problem(format_location(("inputs", name)), f"unknown flow input; the flow declares: {declared}")
            )
        else:
            problems.extend(
                Problem(format_location(loc), message) for loc, message in value_findings(value, ("inputs", name))
            )
    if problems:
        raise FlowError(problems, source=flow.source)
    return {**flow.inputs, **overrides}
