"""Flows and steps as the rest of dagrun sees them: validated, frozen, scripts read in.

Pure: no I/O, no asyncio, no globals. Parsing untrusted JSON into these values is in this module too
(pydantic models, the only source of the flow JSON Schema); reading files is the caller's business
(`read_script`). `parse_flow` reports every problem at once, in file order, or returns a Flow whose
dependencies form a DAG and whose references all point at ancestors.
"""

from __future__ import annotations

import difflib
import importlib
import json
import logging
import math
import random
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, WithJsonSchema
from pydantic_core import ErrorDetails

from dagrun.errors import FlowError, Problem
from dagrun.executor import script_hash
from dagrun.graph import check_graph
from dagrun.references import CompiledInputs, Loc, Outputs, format_location
from dagrun.states import RunIf

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_EXECUTOR = "local"
DEFAULT_CONTEXT_ID = "default"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

ScriptReader = Callable[[str], str]  # script_file as written -> source; raises OSError
ScriptChecker = Callable[[str], list[tuple[int | None, str]]]


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
class Step:
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
        """The step as flow JSON, every inherited field spelled out and the script inlined."""
        document: dict[str, Any] = {"id": self.id, "script": self.script}
        if self.description:
            document["description"] = self.description
        if self.depends_on:
            document["depends_on"] = list(self.depends_on)
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


# --- the flow file: the pydantic models are the only source of its JSON Schema ----------------------

_STEP_ID_PATTERN = r"^[^\s.{}]{1,200}$"
_STEP_ID_RE = re.compile(_STEP_ID_PATTERN)


_ID_RULE = "1-200 characters without whitespace, '.', '{' or '}'"

# A union, not a validator function: pydantic checks 100k ids without calling back into Python.
StepId = Annotated[
    Annotated[str, StringConstraints(pattern=_STEP_ID_PATTERN)] | StrictInt,
    Field(union_mode="left_to_right"),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "pattern": _STEP_ID_PATTERN}, {"type": "integer"}],
            "description": f"A step id: a string of {_ID_RULE}; an integer is read as a string.",
        }
    ),
]
_ID_UNION_TAGS = frozenset({"constrained-str", "int"})  # how pydantic names StepId's members in error locs


def _drop_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # absent means "inherited" or "not given", not this value


def _unset(default: Any, description: str, **constraints: Any) -> Any:
    """A field whose absence matters (inherited from `defaults`, or no contract): the parser asks
    `model_fields_set`, and the schema shows no default."""
    return Field(default=default, description=description, json_schema_extra=_drop_default, **constraints)


class _Model(BaseModel):
    # strict: "30" is not a number and 1 is not true; a flow file says what it means
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RetriesModel(_Model):
    """How often a failed step is tried again, and how long to wait in between."""

    model_config = ConfigDict(title="Retries")

    max_attempts: int = Field(default=1, ge=1, description="Attempts in all, the first included (1: no retry).")
    backoff_s: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="Wait before attempt 2; doubles.")
    max_backoff_s: float = Field(default=60.0, ge=0, allow_inf_nan=False, description="The longest wait, in seconds.")
    jitter: bool = Field(default=False, description="Wait a random time between half and all of the backoff.")


class DefaultsModel(_Model):
    """Values every step inherits unless it sets its own."""

    model_config = ConfigDict(title="Defaults")

    executor: str = Field(default=DEFAULT_EXECUTOR, min_length=1, description="Executor name ('local', ...).")
    timeout_s: float = Field(
        default=DEFAULT_TIMEOUT_S, gt=0, allow_inf_nan=False, description="Seconds a step may run."
    )
    retries: RetriesModel = Field(
        default=RetriesModel(), description="A step's own retries override it field by field."
    )
    context_id: str = Field(
        default=DEFAULT_CONTEXT_ID, min_length=1, description="Routes steps to a context's workers."
    )


class StepModel(_Model):
    """One step: a sandboxed Python script. Exactly one of 'script' or 'script_file'."""

    model_config = ConfigDict(
        title="Step", json_schema_extra={"oneOf": [{"required": ["script"]}, {"required": ["script_file"]}]}
    )

    id: StepId
    description: str = Field(default="", description="What the step does, for people.")
    script: str = _unset("", "Python source run in the sandbox; it reads `inputs` and fills `outputs`.")
    script_file: str = _unset("", "Path of the script, relative to the flow file.", min_length=1)
    depends_on: list[StepId] = Field(default=[], description="Ids of the steps that must end before this one.")
    inputs: dict[str, Any] = Field(
        default={},
        description="JSON values given to the script as `inputs`. A string may hold '${steps.ID.KEY}' (an output of "
        "an ancestor step) or '${flow.KEY}' (a flow input); exactly one reference keeps the value's type. "
        "'$${' is a literal '${'.",
    )
    outputs: list[str] = _unset([], "Output keys the step promises; a missing one fails it; references are checked.")
    run_if: RunIf = Field(
        default=RunIf.ALL_SUCCESS,
        strict=False,  # the enum's values are strings; strict would want enum members
        description="all_success: run when every dependency succeeded; all_done: when they all ended; "
        "any_failed: when one failed (clean-up, alerts).",
    )
    executor: str = _unset(DEFAULT_EXECUTOR, "Executor name; default from 'defaults'.", min_length=1)
    context_id: str = _unset(DEFAULT_CONTEXT_ID, "Worker context; default from 'defaults'.", min_length=1)
    timeout_s: float = _unset(
        DEFAULT_TIMEOUT_S, "Seconds it may run; default from 'defaults'.", gt=0, allow_inf_nan=False
    )
    retries: RetriesModel = _unset(RetriesModel(), "Retry policy; fields not set come from 'defaults.retries'.")


class _FlowFields(_Model):
    schema_uri: str = Field(default="", alias="$schema", description="This file's JSON Schema, for editors; ignored.")
    name: str = Field(min_length=1, description="The flow's name; runs are listed by it.")
    description: str = Field(default="", description="What the flow does, for people.")
    inputs: dict[str, Any] = Field(
        default={}, description="Flow inputs and their defaults (JSON), overridable per run; steps read '${flow.KEY}'."
    )
    defaults: DefaultsModel = Field(default=DefaultsModel(), description="Values steps inherit.")


class FlowModel(_FlowFields):
    """A dagrun flow: sandboxed Python steps, run as a DAG of their dependencies."""

    model_config = ConfigDict(title="dagrun flow")

    steps: list[StepModel] = Field(min_length=1, description="The steps, in any order; each runs after its depends_on.")


class _FlowHeader(_FlowFields):
    """The flow's own fields, validated apart from its steps (which are validated as a list, or one by one
    when any is invalid)."""

    steps: list[Any] = Field(min_length=1)


def flow_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a flow file, from the models."""
    return {"$schema": JSON_SCHEMA_DIALECT, **FlowModel.model_json_schema(by_alias=True)}


# --- parsing ----------------------------------------------------------------------------------------

_Found = tuple[Loc, str, str]  # where, what, and a label for the path: " (step 'load')" or ""
_NO_GOT = frozenset({"missing", "extra_forbidden", "value_error", "too_short"})
_OBJECT_ERRORS = frozenset({"model_type", "model_attributes_type", "dict_type"})


def parse_flow(
    document: str | bytes | Mapping[str, Any], *, source: str = "<flow>", read_script: ScriptReader | None = None
) -> Flow:
    """Validate a flow document (JSON text or an already parsed mapping) into a Flow.

    `read_script` reads a step's script_file (relative paths are its business); without one, script_file
    is a problem. Raises FlowError listing every problem, in file order, each with its place.
    """
    raw, problems = _load_document(document)
    if raw is None:
        raise FlowError(problems, source=source)
    parser = _FlowParser(raw, read_script=read_script, check_json=not isinstance(document, str | bytes))
    flow = parser.parse(source)
    if flow is None or parser.found:
        raise FlowError(parser.problems(), source=source)
    return flow


def _load_document(document: str | bytes | Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[Problem]]:
    if isinstance(document, Mapping):
        return dict(document), []
    if isinstance(document, bytes):
        try:
            text = document.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, [_utf8_problem(document, exc)]
    else:
        text = document
    text = text.removeprefix("\ufeff")  # editors on Windows like to start files with a BOM
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return None, [_json_problem(text, exc)]
    if not isinstance(raw, dict):
        return None, [Problem("", f"a flow is a JSON object, not {_json_type(raw)}")]
    return raw, []


def _utf8_problem(data: bytes, exc: UnicodeDecodeError) -> Problem:
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - data.rfind(b"\n", 0, exc.start)
    return Problem(f"line {line}, column {column}", "not UTF-8 text")


def _json_problem(text: str, error: json.JSONDecodeError) -> Problem:
    try:  # orjson parses; the standard library words the errors people know
        json.loads(text)
    except json.JSONDecodeError as standard:
        error = standard
    except RecursionError:
        pass
    return Problem(f"line {error.lineno}, column {error.colno}", _lower_first(error.msg))


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _short(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model that validates the object at `loc` (relative to `model`), for field-name hints."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        info = current.model_fields.get(part)
        if info is None:
            return None
        args = typing.get_args(info.annotation)
        current = args[0] if args else info.annotation
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
    return typing.cast(type[BaseModel], current)


def _unknown_field(model: type[BaseModel], loc: Loc) -> str:
    message = f"unknown field {loc[-1]!r}"
    owner = _model_at(model, loc[:-1])
    if owner is not None:
        names = [info.alias or name for name, info in owner.model_fields.items()]
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        message += f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(names)}"
    return message


def _error_message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "value_error":
        return str(error.get("ctx", {}).get("error", error["msg"]))
    if kind in _OBJECT_ERRORS:
        message = "expected a JSON object"
    elif kind == "list_type":
        message = "expected a JSON array"
    else:
        message = _lower_first(error["msg"])
    return message if kind in _NO_GOT else f"{message} (got {_short(error['input'])})"


def _is_step_id(loc: Loc) -> bool:
    return bool(loc) and loc[-1] in _ID_UNION_TAGS and (loc[-2:-1] == ("id",) or loc[-3:-2] == ("depends_on",))


def _step_id_message(error: ErrorDetails) -> str:
    if error["type"] == "string_pattern_mismatch":
        return f"step id {error['input']!r} must be {_ID_RULE}"
    return f"a step id is a string or an integer (got {_short(error['input'])})"


def _pydantic_findings(exc: pydantic.ValidationError, model: type[BaseModel], prefix: Loc, label: str) -> list[_Found]:
    found: list[_Found] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if loc[-1:] == ("int",) and _is_step_id(loc):
            continue  # the string member's error says it all
        if _is_step_id(loc):
            where, message = loc[:-1], _step_id_message(error)
        elif error["type"] == "missing":
            where, message = loc[:-1], f"missing required field {loc[-1]!r}"
        elif error["type"] == "extra_forbidden":
            where, message = loc[:-1], _unknown_field(model, loc)
        elif loc == ("steps",) and error["type"] == "too_short":
            where, message = loc, "a flow needs at least one step"
        else:
            where, message = loc, _error_message(error)
        found.append(((*prefix, *where), message, "" if loc[:1] == ("id",) else label))
    return found


def _salvage(
    model: type[_M], raw: Any, exc: pydantic.ValidationError, stand_ins: Mapping[str, Any] | None = None
) -> tuple[_M | None, frozenset[str]]:
    """`raw` validated again without the fields that had errors (defaults, or `stand_ins` for required
    fields, take their place) so that the rest can still be checked; also the names of the fields
    replaced. None when that fails too."""
    dropped = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
    if not isinstance(raw, dict):
        return None, frozenset(dropped)
    kept = {key: value for key, value in raw.items() if key not in dropped}
    for key, value in (stand_ins or {}).items():
        if key not in kept:
            kept[key] = value
            dropped.add(key)
    try:
        return model.model_validate(kept), frozenset(dropped)
    except pydantic.ValidationError:
        return None, frozenset(dropped)


_M = typing.TypeVar("_M", bound=BaseModel)


def _not_json(value: Any, loc: Loc) -> list[tuple[Loc, str]]:
    """Places in `value` that hold something JSON cannot say (only possible for mapping documents)."""
    found: list[tuple[Loc, str]] = []
    stack: list[tuple[Any, Loc]] = [(value, loc)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, element in item.items():
                if isinstance(key, str):
                    stack.append((element, (*where, key)))
                else:
                    found.append((where, f"object keys must be strings (got {key!r})"))
        elif isinstance(item, list):
            stack.extend((element, (*where, index)) for index, element in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            found.append((where, f"not a JSON value (got {item!r})"))
        elif not (item is None or isinstance(item, str | int | float)):
            found.append((where, f"not a JSON value (got {type(item).__name__})"))
    return sorted(found)


def _raw_step_id(raw_step: Any) -> str | None:
    """The id of a step that failed validation, when it has a usable one."""
    step_id = raw_step.get("id") if isinstance(raw_step, dict) else None
    if isinstance(step_id, int) and not isinstance(step_id, bool):
        return str(step_id)
    return step_id if isinstance(step_id, str) and _STEP_ID_RE.fullmatch(step_id) else None


def _label(step_id: str | None) -> str:
    return f" (step {step_id!r})" if step_id is not None else ""


def _file_position(raw: Any, loc: Loc) -> tuple[int, ...]:
    """Where `loc` is in the document, as a sort key: JSON objects keep their keys in file order."""
    position: list[int] = []
    node = raw
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str):
            keys = list(node)
            position.append(keys.index(part) if part in node else len(keys))
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            position.append(part)
            node = node[part]
        else:
            position.append(part if isinstance(part, int) else 1 << 30)
            node = None
    return tuple(position)


def _script_checker() -> ScriptChecker:
    """The sandbox's compile check; a plain syntax check when the sandbox policy is not installed."""
    try:
        module = importlib.import_module("dagrun.sandbox.policy")
    except ModuleNotFoundError as exc:
        if exc.name not in ("dagrun.sandbox", "dagrun.sandbox.policy"):
            raise
        return _check_syntax
    checker: ScriptChecker = module.check_script
    return checker


def _check_syntax(source: str) -> list[tuple[int | None, str]]:
    try:
        compile(source, "<script>", "exec", dont_inherit=True)
    except SyntaxError as exc:
        return [(exc.lineno, exc.msg)]
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        return [(None, str(exc) or type(exc).__name__)]
    return []


class _FlowParser:
    """One parse: collects findings while building the steps, so that every problem is reported."""

    def __init__(self, raw: dict[str, Any], *, read_script: ScriptReader | None, check_json: bool) -> None:
        self.raw = raw
        self.read_script = read_script
        self.check_json = check_json  # documents parsed from text hold JSON values by construction
        self.found: list[_Found] = []
        self._files: dict[str, tuple[str | None, str]] = {}  # script_file -> (source, why not)
        self._hashes: dict[str, str] = {}  # source -> hash
        self._script_problems: dict[str, list[tuple[int | None, str]]] = {}  # hash -> problems
        self._checker: ScriptChecker | None = None
        self.graph_is_partial = False  # some step's depends_on is unknown: ancestry can't be judged

    def problems(self) -> list[Problem]:
        ordered = sorted(self.found, key=lambda found: _file_position(self.raw, found[0]))
        return [Problem(format_location(loc) + label, message) for loc, message, label in ordered]

    def parse(self, source: str) -> Flow | None:
        header, flow_inputs, defaults = self._header()
        retries = RetryPolicy(**defaults.retries.model_dump())
        steps: list[Step] = []
        for index, (model, placeholder, dropped) in enumerate(self._step_models()):
            if model is not None:
                step = self._step(index, model, defaults, retries, dropped)
                if "id" not in dropped:  # a step without an id of its own has no place in the graph
                    steps.append(step)
            elif placeholder is not None:
                steps.append(placeholder)
                self.graph_is_partial = True
        graph_findings = check_graph(steps, flow_inputs, check_ancestry=not self.graph_is_partial)
        self.found.extend((loc, message, "") for loc, message in graph_findings)
        if header is None or flow_inputs is None:
            return None
        if self.found:  # the caller raises FlowError
            return None
        document = _with_scripts_inlined(orjson.loads(orjson.dumps(self.raw)) if self.check_json else self.raw, steps)
        return Flow(header.name, tuple(steps), flow_inputs, header.description, source, document)

    def _header(self) -> tuple[_FlowFields | None, dict[str, Any] | None, DefaultsModel]:
        """The flow's own fields; flow inputs are None when they are invalid (references to them can't
        be checked), defaults are salvaged field by field."""
        try:
            header: _FlowFields | None = _FlowHeader.model_validate(self.raw)
        except pydantic.ValidationError as exc:
            header = None
            self.found.extend(_pydantic_findings(exc, _FlowHeader, (), ""))
            bad = {error["loc"][0] for error in exc.errors() if error["loc"]}
        else:
            bad = set()
        flow_inputs = None if "inputs" in bad else dict(self.raw.get("inputs", {}))
        if flow_inputs is not None and self.check_json:
            self.found.extend((loc, message, "") for loc, message in _not_json(flow_inputs, ("inputs",)))
        raw_defaults = self.raw.get("defaults", {})
        try:
            defaults = DefaultsModel.model_validate(raw_defaults)
        except pydantic.ValidationError as exc:  # already reported by the header
            defaults = _salvage(DefaultsModel, raw_defaults, exc)[0] or DefaultsModel()
        return header, flow_inputs, defaults

    def _step_models(self) -> list[tuple[StepModel | None, Step | None, frozenset[str]]]:
        """Each step's model (and the invalid fields left out of it), or a stand-in that only carries
        its id, so that it is not "unknown" to the steps that depend on it."""
        raw_steps = self.raw.get("steps")
        if not isinstance(raw_steps, list):
            return []
        try:  # the fast path: one call for the whole list
            return [(model, None, _NOTHING) for model in _STEP_LIST.validate_python(raw_steps)]
        except pydantic.ValidationError:
            pass
        models: list[tuple[StepModel | None, Step | None, frozenset[str]]] = []
        for index, raw_step in enumerate(raw_steps):
            try:
                models.append((StepModel.model_validate(raw_step), None, _NOTHING))
            except pydantic.ValidationError as exc:
                step_id = _raw_step_id(raw_step)
                self.found.extend(_pydantic_findings(exc, StepModel, ("steps", index), _label(step_id)))
                model, dropped = _salvage(StepModel, raw_step, exc, {"id": "-"})
                placeholder = Step(step_id, index, "", "") if model is None and step_id is not None else None
                models.append((model, placeholder, dropped))
        return models

    def _step(
        self, index: int, model: StepModel, defaults: DefaultsModel, retries: RetryPolicy, dropped: frozenset[str]
    ) -> Step:
        """The step from its model; `dropped` names invalid fields, already reported, left out of it."""
        where: Loc = ("steps", index)
        step_id = str(model.id)
        label = "" if "id" in dropped else _label(step_id)
        script = "" if dropped & {"script", "script_file"} else self._script(model, where, label)
        if self.check_json:
            self.found.extend((loc, message, label) for loc, message in _not_json(model.inputs, (*where, "inputs")))
        if dropped and ("depends_on" in dropped or dropped - _STEP_FIELDS):
            # its real depends_on is invalid, or maybe misspelled as an unknown field: without it, references
            # to steps upstream of it would look like races
            self.graph_is_partial = True
        given = model.model_fields_set
        if "retries" in given:
            retries = RetryPolicy(
                **(defaults.retries.model_dump() | model.retries.model_dump(include=model.retries.model_fields_set))
            )
        return Step(
            id=step_id,
            index=index,
            script=script,
            script_hash=self._hash(script),
            depends_on=tuple(map(str, model.depends_on)),
            inputs=model.inputs,
            outputs=tuple(model.outputs) if "outputs" in given else None,
            run_if=model.run_if,
            executor=model.executor if "executor" in given else defaults.executor,
            context_id=model.context_id if "context_id" in given else defaults.context_id,
            timeout_s=model.timeout_s if "timeout_s" in given else defaults.timeout_s,
            retries=retries,
            script_file=model.script_file if "script_file" in given else None,
            description=model.description,
        )

    def _hash(self, script: str) -> str:
        digest = self._hashes.get(script)
        if digest is None:
            digest = self._hashes[script] = script_hash(script)
        return digest

    def _script(self, model: StepModel, where: Loc, label: str) -> str:
        """The step's source ("" when it has none), its problems reported; each distinct script is
        compiled once."""
        has_script, has_file = "script" in model.model_fields_set, "script_file" in model.model_fields_set
        if has_script == has_file:
            message = (
                "has both 'script' and 'script_file'; keep one"
                if has_script
                else "needs 'script' (Python source) or 'script_file' (a path relative to the flow file)"
            )
            self.found.append((where, message, label))
            return ""
        field_name = "script" if has_script else "script_file"
        source = model.script if has_script else self._read(model.script_file, (*where, field_name), label)
        if source:
            for line, message in self._check(source):
                self.found.append(((*where, field_name), f"line {line}: {message}" if line else message, label))
        return source

    def _read(self, path: str, where: Loc, label: str) -> str:
        if path not in self._files:
            self._files[path] = self._load_script(path)
        source, failure = self._files[path]
        if source is None:
            self.found.append((where, f"cannot read {path!r}: {failure}", label))
        return source or ""

    def _load_script(self, path: str) -> tuple[str | None, str]:
        if self.read_script is None:
            return None, "a flow given as a document must inline its scripts with 'script'"
        try:
            return self.read_script(path), ""
        except OSError as exc:
            return None, exc.strerror or str(exc)
        except UnicodeDecodeError:
            return None, "not UTF-8 text"

    def _check(self, source: str) -> list[tuple[int | None, str]]:
        digest = self._hash(source)
        problems = self._script_problems.get(digest)
        if problems is None:
            if self._checker is None:
                self._checker = _script_checker()
            problems = self._script_problems[digest] = self._checker(source)
        return problems


def _with_scripts_inlined(raw: dict[str, Any], steps: list[Step]) -> dict[str, Any]:
    """The raw document (a copy the caller cannot change) with each script_file replaced by its source."""
    if any(step.script_file is not None for step in steps):
        raw_steps = list(raw["steps"])
        for step in steps:
            if step.script_file is not None:
                inlined = {key: value for key, value in raw_steps[step.index].items() if key != "script_file"}
                raw_steps[step.index] = inlined | {"script": step.script}
        raw["steps"] = raw_steps
    return raw


_STEP_LIST = pydantic.TypeAdapter(list[StepModel])
_STEP_FIELDS = frozenset(StepModel.model_fields)
_NOTHING: frozenset[str] = frozenset()


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
                Problem(format_location(loc), message) for loc, message in _not_json(value, ("inputs", name))
            )
    if problems:
        raise FlowError(problems, source=flow.source)
    return {**flow.inputs, **overrides}
