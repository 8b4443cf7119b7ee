"""The flow file's pydantic models: the only source of its JSON Schema (`dagrun schema`).

Untrusted JSON is validated by these models (`extra="forbid"`); `flow_parser` turns them into Flow values.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, WithJsonSchema, field_validator

from dagrun.contract.states import RunIf
from dagrun.flow.limits import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BACKOFF_S,
    DEFAULT_TIMEOUT_S,
    LIMIT_ATTEMPTS,
    LIMIT_BACKOFF_S,
    LIMIT_TIMEOUT_S,
    LIMIT_WAIT_S,
)
from dagrun.flow.references import MAX_NESTING

DEFAULT_EXECUTOR = "local"
DEFAULT_CONTEXT_ID = "default"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_STEP_ID_PATTERN = r"^[^\s.{}]{1,200}$"
STEP_ID_RE = re.compile(_STEP_ID_PATTERN)


ID_RULE = "1-200 characters without whitespace, '.', '{' or '}'"

# A union, not a validator function: pydantic checks 100k ids without calling back into Python.
StepId = Annotated[
    Annotated[str, StringConstraints(pattern=_STEP_ID_PATTERN)] | StrictInt,
    Field(union_mode="left_to_right"),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "pattern": _STEP_ID_PATTERN}, {"type": "integer"}],
            "description": f"A step id: a string of {ID_RULE}; an integer is read as a string.",
        }
    ),
]
ID_UNION_TAGS = frozenset({"constrained-str", "int"})  # how pydantic names StepId's members in error locs

# What a step's `when` may say (`dagrun.flow.conditions`), for its description and messages.
CONDITION_GRAMMAR = (
    "'${steps.ID.KEY}' or '${flow.KEY}' (a JSON boolean), 'not ${...}', or '${...} OP VALUE' with OP one of "
    '==, !=, <, <=, >, >= and VALUE a JSON number, "string", true, false or null'
)
STEP_BODIES = ("script", "script_file", "wait_for", "flow")  # a step has exactly one
# Fields that only say how a script runs: a step that waits for a signal runs none.
SCRIPT_ONLY_FIELDS = ("inputs", "outputs", "executor", "context_id", "timeout_s", "retries")
# What a sub-flow step does not take: it runs once, as a child run whose outputs are the child's declared ones.
NOT_FOR_SUBFLOWS = ("outputs", "executor", "context_id", "timeout_s", "retries", "map")


def _unset(default: Any, description: str, *, maximum: float | None = None, **constraints: Any) -> Any:
    """A field whose absence matters (inherited from `defaults`, or no contract): the parser asks
    `model_fields_set`, and the schema shows no default (and the default `maximum`, if any)."""

    def extra(schema: dict[str, Any]) -> None:
        schema.pop("default", None)  # absent means "inherited" or "not given", not this value
        schema.update(_limited(maximum) if maximum is not None else {})

    return Field(default=default, description=description, json_schema_extra=extra, **constraints)


def _limited(maximum: float) -> dict[str, Any]:
    """Schema keywords for a number bounded by a default limit: an editor warns past it (a server may allow
    more, or less: the limits are its to set, see `FlowLimits`). Not a model constraint, for that reason."""
    return {"maximum": maximum}


_LIMIT_NOTE = " Whoever runs dagrun sets its maximum (default: %.15g)."


class _Model(BaseModel):
    # strict: "30" is not a number and 1 is not true; a flow file says what it means
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RetriesModel(_Model):
    """How often a failed step is tried again, and how long to wait in between."""

    model_config = ConfigDict(title="Retries")

    max_attempts: int = Field(
        default=DEFAULT_MAX_ATTEMPTS,
        ge=1,
        json_schema_extra=_limited(LIMIT_ATTEMPTS),
        description="Attempts in all, the first included (1: no retry)." + _LIMIT_NOTE % LIMIT_ATTEMPTS,
    )
    backoff_s: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        json_schema_extra=_limited(LIMIT_BACKOFF_S),
        description="Wait before attempt 2; doubles." + _LIMIT_NOTE % LIMIT_BACKOFF_S,
    )
    max_backoff_s: float = Field(
        default=DEFAULT_MAX_BACKOFF_S,
        ge=0,
        allow_inf_nan=False,
        json_schema_extra=_limited(LIMIT_BACKOFF_S),
        description="The longest wait, in seconds." + _LIMIT_NOTE % LIMIT_BACKOFF_S,
    )
    jitter: bool = Field(default=False, description="Wait a random time between half and all of the backoff.")


class WaitForModel(_Model):
    """The step runs no script: it waits until a signal provides these fields, which become its outputs."""

    model_config = ConfigDict(title="WaitFor")

    fields: list[str] = Field(
        min_length=1,
        json_schema_extra={"uniqueItems": True},
        description="Output keys a signal must provide, each once; steps downstream read '${steps.ID.KEY}'.",
    )
    timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        default=None,
        json_schema_extra=_limited(LIMIT_WAIT_S),
        description="Seconds to wait for the signal; absent or null: no limit." + _LIMIT_NOTE % LIMIT_WAIT_S,
    )

    @field_validator("fields")
    @classmethod
    def _distinct(cls, fields: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in fields:
            if name in seen:
                raise ValueError(f"field {name!r} is listed twice; list each field once")
            seen.add(name)
        return fields


class DefaultsModel(_Model):
    """Values every step inherits unless it sets its own."""

    model_config = ConfigDict(title="Defaults")

    executor: str = Field(default=DEFAULT_EXECUTOR, min_length=1, description="Executor name ('local', ...).")
    timeout_s: float = Field(
        default=DEFAULT_TIMEOUT_S,
        gt=0,
        allow_inf_nan=False,
        json_schema_extra=_limited(LIMIT_TIMEOUT_S),
        description="Seconds a step may run." + _LIMIT_NOTE % LIMIT_TIMEOUT_S,
    )
    retries: RetriesModel = Field(
        default=RetriesModel(), description="A step's own retries override it field by field."
    )
    context_id: str = Field(
        default=DEFAULT_CONTEXT_ID, min_length=1, description="Routes steps to a context's workers."
    )


_WAITS: dict[str, Any] = {
    "required": ["wait_for"],
    "not": {"anyOf": [{"required": [name]} for name in SCRIPT_ONLY_FIELDS]},  # it runs no script
}
_RUNS_A_FLOW: dict[str, Any] = {
    "required": ["flow"],
    "not": {"anyOf": [{"required": [name]} for name in NOT_FOR_SUBFLOWS]},  # a child run, not a script
}


class MapModel(_Model):
    """Run the step once per item of a list produced at run time: each item is an instance, `ID[i]`."""

    model_config = ConfigDict(title="Map", populate_by_name=False)

    over: str = Field(
        min_length=1,
        description="The list: exactly one reference, '${steps.ID.KEY}' (an output of an ancestor) or "
        "'${flow.KEY}' (a flow input), whose value is a JSON array.",
    )
    as_: str = Field(
        default="item",
        alias="as",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The input each instance gets its item in (default 'item'), beside the step's own inputs.",
    )
    max_parallel: int | None = Field(
        default=None, ge=1, description="Instances queued or running at once; default: the run's max_parallel."
    )
    on_item_failure: Literal["fail", "continue"] = Field(
        default="fail",
        description="fail: the first failed instance fails the step, and no new instance starts; continue: "
        "every instance runs, the step succeeds, and a failed instance's outputs are null in the lists.",
    )


class StepModel(_Model):
    """One step: a sandboxed Python script, a wait for a signal (a person's approval, say), or another flow run
    as a child run. Exactly one of 'script', 'script_file', 'wait_for' or 'flow'; a 'wait_for' step takes none
    of the fields about its script, a 'flow' step none but its inputs."""

    model_config = ConfigDict(
        title="Step",
        json_schema_extra={
            "oneOf": [{"required": ["script"]}, {"required": ["script_file"]}, _WAITS, _RUNS_A_FLOW],
        },
    )

    id: StepId
    description: str = Field(default="", description="What the step does, for people.")
    script: str = _unset("", "Python source run in the sandbox; it reads `inputs` and fills `outputs`.")
    script_file: str = _unset(
        "", "Path of the script, relative to the flow file and under its directory.", min_length=1
    )
    # None when absent: defaults are not validated, so null is refused while absence is not; the parser
    # asks `model_fields_set`, like for the other fields whose absence matters
    wait_for: WaitForModel = _unset(None, "Instead of a script: wait for a signal that provides these fields.")
    flow: str | dict[str, Any] = _unset(
        None,
        "Instead of a script: run this flow as a child run, given the step's inputs as its flow inputs; the step's "
        "outputs are the child's declared 'outputs'. A path relative to the flow file (under its directory), "
        "or the flow itself, inline.",
    )
    depends_on: list[StepId] = Field(default=[], description="Ids of the steps that must end before this one.")
    inputs: dict[str, Any] = Field(
        default={},
        description="JSON values given to the script as `inputs`. A string may hold '${steps.ID.KEY}' (an output of "
        "an ancestor step) or '${flow.KEY}' (a flow input); exactly one reference keeps the value's type. "
        f"'$${{' is a literal '${{'. A value nests at most {MAX_NESTING} arrays and objects deep.",
    )
    outputs: list[str] = _unset([], "Output keys the step promises; a missing one fails it; references are checked.")
    run_if: RunIf = Field(
        default=RunIf.ALL_SUCCESS,
        strict=False,  # the enum's values are strings; strict would want enum members
        description="all_success: run when every dependency succeeded; all_done: when they all ended; "
        "any_failed: when one failed (clean-up, alerts).",
    )
    map: MapModel = _unset(
        None,
        "Run the step once per item of a list: downstream steps see each output key as the list of the "
        "instances' values, in order. An empty list: the step succeeds with empty lists.",
    )
    when: str = _unset(
        None,
        "A condition checked once run_if is met; false: the step is skipped (a clean skip: all_success steps after "
        f"it are skipped, all_done steps run). It is {CONDITION_GRAMMAR}; the step "
        "it names is an ancestor. A value it cannot judge fails the step.",
    )
    executor: str = _unset(DEFAULT_EXECUTOR, "Executor name; default from 'defaults'.", min_length=1)
    context_id: str = _unset(DEFAULT_CONTEXT_ID, "Worker context; default from 'defaults'.", min_length=1)
    timeout_s: float = _unset(
        DEFAULT_TIMEOUT_S,
        "Seconds it may run; default from 'defaults'." + _LIMIT_NOTE % LIMIT_TIMEOUT_S,
        maximum=LIMIT_TIMEOUT_S,
        gt=0,
        allow_inf_nan=False,
    )
    retries: RetriesModel = _unset(RetriesModel(), "Retry policy; fields not set come from 'defaults.retries'.")


class FlowFields(_Model):
    schema_uri: str = Field(default="", alias="$schema", description="This file's JSON Schema, for editors; ignored.")
    name: str = Field(min_length=1, description="The flow's name; runs are listed by it.")
    description: str = Field(default="", description="What the flow does, for people.")
    inputs: dict[str, Any] = Field(
        default={},
        description="Flow inputs and their defaults (JSON, nested at most "
        f"{MAX_NESTING} arrays and objects deep), overridable per run; steps read '${{flow.KEY}}'.",
    )
    defaults: DefaultsModel = Field(default=DefaultsModel(), description="Values steps inherit.")
    outputs: dict[str, str] = Field(
        default={},
        description="The run's outputs, resolved when it ends: each is exactly one reference to a step's output, "
        "'${steps.ID.KEY}'. A flow run as a sub-flow gives these to the step that runs it.",
    )


class FlowModel(FlowFields):
    """A dagrun flow: sandboxed Python steps, run as a DAG of their dependencies."""

    model_config = ConfigDict(title="dagrun flow")

    steps: list[StepModel] = Field(min_length=1, description="The steps, in any order; each runs after its depends_on.")


class FlowHeader(FlowFields):
    """The flow's own fields, validated apart from its steps (which are validated as a list, or one by one
    when any is invalid)."""

    steps: list[Any] = Field(min_length=1)


def flow_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a flow file, from the models."""
    return {"$schema": JSON_SCHEMA_DIALECT, **FlowModel.model_json_schema(by_alias=True)}
