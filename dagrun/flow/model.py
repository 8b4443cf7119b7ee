"""Flows and steps as the rest of dagrun sees them: validated, frozen, scripts read in.

Pure: no I/O, no asyncio, no globals. A Flow comes from `dagrun.flow.parser.parse_flow`, which checks
that its dependencies form a DAG and that its references all point at ancestors.
"""

from __future__ import annotations

import enum
import functools
import random
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dagrun.contract.states import RunIf
from dagrun.errors import FlowError, Problem
from dagrun.flow.conditions import Condition
from dagrun.flow.limits import DEFAULT_TIMEOUT_S
from dagrun.flow.problems import value_findings
from dagrun.flow.references import (
    CompiledInputs,
    MalformedReference,
    Outputs,
    Reference,
    format_location,
    parse_reference,
)
from dagrun.flow.schema import DEFAULT_CONTEXT_ID, DEFAULT_EXECUTOR, NOT_FOR_SUBFLOWS, SCRIPT_ONLY_FIELDS

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


# How `to_json` writes a field, as its dataclass metadata. Unmarked: only when it differs from its default
# (a field without a default always), so that a new plain field needs no word here.
SPELLED_OUT: Mapping[str, bool] = MappingProxyType({"spelled_out": True})  # even at its default
NOT_WRITTEN: Mapping[str, bool] = MappingProxyType({"written": False})  # derived, or not the flow's to say
# What a step that waits for a signal does not write: the fields about a script (`SCRIPT_ONLY_FIELDS`).
_NOT_WAITING = ("script", *SCRIPT_ONLY_FIELDS)
_NOT_RUNNING_A_SCRIPT = ("script", *NOT_FOR_SUBFLOWS)  # nor does a step that runs a flow


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most `max_attempts` attempts; the wait before attempt n+1 is backoff_s * 2**(n-1), capped."""

    # spelled out: a step's retries inherit field by field from `defaults`, which its JSON does not carry
    max_attempts: int = field(default=1, metadata=SPELLED_OUT)
    backoff_s: float = field(default=0.0, metadata=SPELLED_OUT)
    max_backoff_s: float = field(default=60.0, metadata=SPELLED_OUT)
    jitter: bool = field(default=False, metadata=SPELLED_OUT)

    def delay_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based); with jitter, in [delay/2, delay]."""
        # the exponent is capped so that a huge attempt number cannot overflow a float
        delay = min(self.max_backoff_s, self.backoff_s * 2.0 ** min(attempt - 1, 1000))
        return delay * (0.5 + rand() / 2) if self.jitter else delay


@dataclass(frozen=True, slots=True)
class MapSpec:
    """A mapped step: one instance (`ID[i]`) per item of the list `over` refers to, given its item as the
    input `as_`; at most `max_parallel` instances at once (None: the run's max_parallel)."""

    over: str  # exactly one reference, checked by validation
    as_: str = field(default="item", metadata=MappingProxyType({"json_name": "as"}))
    max_parallel: int | None = None
    on_item_failure: str = "fail"  # or "continue"

    @property
    def reference(self) -> Reference | MalformedReference:
        """What `over` refers to, or why it is not exactly one reference (a validation problem)."""
        return parse_reference(self.over)


@dataclass(frozen=True, slots=True)
class WaitFor:
    """What a step that runs no script waits for: a signal providing `fields`, within `timeout_s` if set."""

    fields: tuple[str, ...]  # distinct; they are the step's declared outputs
    timeout_s: float | None = None  # None: it waits as long as it takes; not written then


@dataclass(frozen=True, slots=True)
class Step:
    """One step. With `wait_for` it runs no script and waits for a signal instead: its script and
    script_hash are "", its outputs are wait_for.fields, its inputs are empty, and executor, context_id,
    timeout_s and retries keep their defaults (its deadline is wait_for.timeout_s).

    With `flow` it runs that flow as a child run: its script and script_hash are "" too, its outputs are the
    child's declared outputs, and its inputs are the child's flow inputs.

    `parse_flow` sets a field from the `StepModel` field of the same name; `to_json` writes the fields in this
    order, as their metadata says (`SPELLED_OUT`, `NOT_WRITTEN`)."""

    id: str
    index: int = field(metadata=NOT_WRITTEN)  # position in the flow's `steps` list, for messages (`steps[3]`)
    script: str  # the source, inline or read from script_file
    script_hash: str = field(metadata=NOT_WRITTEN)
    wait_for: WaitFor | None = None
    flow: Flow | None = None  # a sub-flow: run as a child run (`engine.subflows`), written inline
    map: MapSpec | None = None
    description: str = ""
    depends_on: tuple[str, ...] = ()
    inputs: Mapping[str, Any] = field(default_factory=dict)  # raw values; may hold ${...} references
    outputs: tuple[str, ...] | None = None  # declared output keys: the step's contract, when given
    run_if: RunIf = field(default=RunIf.ALL_SUCCESS, metadata=SPELLED_OUT)
    when: str | None = None  # a condition (`conditions`): once its run_if is met, it runs only if this holds
    # inherited from the flow's `defaults`, so spelled out: a step's JSON means the same wherever it is read
    executor: str = field(default=DEFAULT_EXECUTOR, metadata=SPELLED_OUT)
    context_id: str = field(default=DEFAULT_CONTEXT_ID, metadata=SPELLED_OUT)
    timeout_s: float = field(default=DEFAULT_TIMEOUT_S, metadata=SPELLED_OUT)
    retries: RetryPolicy = field(default_factory=RetryPolicy, metadata=SPELLED_OUT)
    # as written in the flow, for messages; not compared, since to_json() inlines the script
    script_file: str | None = field(default=None, compare=False, metadata=NOT_WRITTEN)
    flow_file: str | None = field(default=None, compare=False, metadata=NOT_WRITTEN)  # likewise, for `flow`
    _compiled: CompiledInputs | None = field(default=None, init=False, repr=False, compare=False, metadata=NOT_WRITTEN)
    _condition: Condition | None = field(default=None, init=False, repr=False, compare=False, metadata=NOT_WRITTEN)

    @property
    def compiled_inputs(self) -> CompiledInputs:
        """The inputs compiled for resolution, built on first use and kept."""
        compiled = self._compiled
        if compiled is None:
            compiled = CompiledInputs(self.inputs, step_id=self.id)  # validation reports its malformed ones
            object.__setattr__(self, "_compiled", compiled)  # a cache, not state: same result every time
        return compiled

    @property
    def condition(self) -> Condition | None:
        """The `when` compiled, built on first use and kept; None without one."""
        condition = self._condition
        if condition is None and self.when is not None:
            condition = Condition(self.when, step_id=self.id)  # validation reports a malformed one
            object.__setattr__(self, "_condition", condition)  # a cache, like `compiled_inputs`
        return condition

    def resolve_inputs(self, flow_inputs: Mapping[str, Any], outputs_of: Outputs) -> dict[str, Any]:
        """The inputs with references replaced (see CompiledInputs.resolve); raises UnresolvedInput."""
        return self.compiled_inputs.resolve(flow_inputs, outputs_of)

    def to_json(self) -> dict[str, Any]:
        """The step as flow JSON, every inherited field spelled out, the script and the sub-flow inlined; a step
        that waits for a signal has none of the fields about a script, one that runs a flow none but its inputs."""
        if self.wait_for is not None:
            return _json_object(self, skipped=_NOT_WAITING)
        return _json_object(self, skipped=_NOT_RUNNING_A_SCRIPT if self.flow is not None else ())


def _json_object(value: DataclassInstance, *, skipped: Collection[str] = ()) -> dict[str, Any]:
    """A frozen value's fields as a JSON object, in field order, as their metadata says (`SPELLED_OUT`,
    `NOT_WRITTEN`; others only when not at their default), but for those `skipped`."""
    document: dict[str, Any] = {}
    for name, json_name, default, is_spelled_out in _written_fields(type(value)):
        if name not in skipped:
            item = getattr(value, name)
            if is_spelled_out or item != default:
                document[json_name] = _json_value(item)
    return document


@functools.cache
def _written_fields(cls: type[DataclassInstance]) -> tuple[tuple[str, str, Any, bool], ...]:
    """(name, JSON name, default, is spelled out) of each field `json_object` writes; a field without a
    default is always written."""
    written: list[tuple[str, str, Any, bool]] = []
    for item in fields(cls):
        if item.metadata.get("written", True):
            default = item.default_factory() if item.default_factory is not MISSING else item.default
            spelled_out = item.metadata.get("spelled_out", False) or default is MISSING
            written.append((item.name, item.metadata.get("json_name", item.name), default, spelled_out))
    return tuple(written)


def _json_value(value: Any) -> Any:
    if isinstance(value, Flow):
        return value.to_json()
    if is_dataclass(value) and not isinstance(value, type):
        return _json_object(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value.value if isinstance(value, enum.Enum) else value


@dataclass(frozen=True, slots=True)
class Flow:
    name: str
    steps: tuple[Step, ...]  # in file order
    inputs: Mapping[str, Any] = field(default_factory=dict)  # declared flow inputs with their defaults
    description: str = ""
    source: str = field(default="<flow>", compare=False)  # the file it came from, for messages
    # The document it was parsed from, scripts and sub-flows inlined: to_json() for free (it is persisted with
    # each run).
    document: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    outputs: Mapping[str, str] = field(default_factory=dict)  # the run's outputs: name -> '${steps.ID.KEY}'
    _by_id: dict[str, Step] | None = field(default=None, init=False, repr=False, compare=False)

    def script_steps(self, where: str = "") -> Iterator[tuple[str, Step]]:
        """Every step that runs a script, here and in the flows its sub-flow steps run (their child runs use
        the same executors), each with its place (`steps[2].flow.steps[0]`)."""
        for step in self.steps:
            place = f"{where}steps[{step.index}]"
            if step.flow is not None:
                yield from step.flow.script_steps(f"{place}.flow.")
            elif step.wait_for is None:
                yield place, step

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
        if self.outputs:
            document["outputs"] = dict(self.outputs)
        return document

    def inputs_with(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The flow's inputs: its declared defaults, overridden by `overrides`. FlowError for a name the flow
        does not declare, or a value that is not JSON. A method, so that what submits a flow it was given
        needs no import of the flow model (`dagrun status` starts without it)."""
        problems: list[Problem] = []
        declared = ", ".join(sorted(self.inputs)) or "none"
        for name, value in overrides.items():
            if name not in self.inputs:
                problems.append(
                    Problem(format_location(("inputs", name)), f"unknown flow input; the flow declares: {declared}")
                )
            else:
                problems.extend(
                    Problem(format_location(loc), message) for loc, message in value_findings(value, ("inputs", name))
                )
        if problems:
            raise FlowError(problems, source=self.source)
        return {**self.inputs, **overrides}
