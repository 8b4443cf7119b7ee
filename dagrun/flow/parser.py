"""Parsing a flow document into a Flow, reporting every problem at once, in file order.

Pure: reading script files and knowing what may run a script are the caller's business (`read_script`,
`check_script`). A Flow comes back only when its dependencies form a DAG, its references point at
ancestors and its scripts pass the check. A plain step field (`_PLAIN`) needs no code here: the Step
field of the same name takes what the flow writes, or what its `defaults` say, or its own default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, NamedTuple

import orjson
import pydantic

from dagrun.errors import FlowError, Problem
from dagrun.flow.graph import check_graph
from dagrun.flow.limits import DEFAULT_LIMITS, FlowLimits, over_limits
from dagrun.flow.model import Flow, MapSpec, RetryPolicy, Step, WaitFor
from dagrun.flow.outputs import check_flow_outputs
from dagrun.flow.problems import (
    Found,
    decoded,
    file_position,
    json_problem,
    json_type,
    line_at,
    line_place,
    pydantic_findings,
    raw_step_id,
    salvage,
    step_label,
    value_findings,
)
from dagrun.flow.references import Loc, format_location
from dagrun.flow.schema import (
    NOT_FOR_SUBFLOWS,
    SCRIPT_ONLY_FIELDS,
    STEP_BODIES,
    DefaultsModel,
    FlowFields,
    FlowHeader,
    MapModel,
    RetriesModel,
    StepModel,
    WaitForModel,
)
from dagrun.flow.scripts import ScriptChecker, ScriptReader, Scripts, check_syntax
from dagrun.flow.subflows import (
    Enclosing,
    FlowReader,
    SubflowReading,
    misplaced_findings,
    parse_subflow,
    subflow_input_findings,
)


def parse_flow(
    document: str | bytes | Mapping[str, Any],
    *,
    source: str = "<flow>",
    read_script: ScriptReader | None = None,
    read_flow: FlowReader | None = None,
    check_script: ScriptChecker = check_syntax,
    limits: FlowLimits = DEFAULT_LIMITS,
    lines: Mapping[Loc, int] | None = None,
    nesting: tuple[Enclosing, ...] = (),
) -> Flow:
    """Validate a flow document (JSON text or an already parsed mapping) into a Flow.

    `read_script` reads a step's script_file (relative paths are its business); without one, script_file
    is a problem; `read_flow` likewise reads a sub-flow's file, and `nesting` names the flow files this
    document is (the loader's) and is within (a sub-flow's), outermost first: a sub-flow file among them is a
    cycle. `check_script` lists what is wrong with a script. The default, `check_syntax`, finds what
    no Python runs, a problem whatever runs the flow; the flow model knows no sandbox. What the sandbox
    would refuse besides is checked by whoever knows it runs the flow (`dagrun.parse_flow`, the CLI, the
    REST API and the orchestrator pass the sandbox policy's `check_script`): a problem now rather than a
    failed step later. A timeout, attempt count or wait written over `limits` is a problem. Raises
    FlowError listing every problem, in file order, each with its place, and the line of that place when
    `lines` (a mapping document read from a file: YAML) knows it.
    """
    raw, problems = _load_document(document)
    if raw is None:
        raise FlowError(problems, source=source)
    check_json = not isinstance(document, str | bytes)
    scripts = Scripts(read_script=read_script, check_script=check_script)
    reading = SubflowReading(read_flow, read_script, check_script, limits, nesting or (Enclosing(None, source),))
    parser = _FlowParser(raw, scripts=scripts, check_json=check_json, reading=reading, lines=lines or {})
    flow = parser.parse(source)
    if flow is None or parser.found:
        raise FlowError(parser.problems(), source=source)
    return flow


def _load_document(document: str | bytes | Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[Problem]]:
    if isinstance(document, Mapping):
        return dict(document), []
    text = decoded(document)
    if isinstance(text, Problem):
        return None, [text]
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return None, [json_problem(text, exc)]
    if not isinstance(raw, dict):
        return None, [Problem("", f"a flow is a JSON object, not {json_type(raw)}")]
    return raw, []


class _FlowParser:
    """One parse: collects findings while building the steps, so that every problem is reported."""

    def __init__(
        self,
        raw: dict[str, Any],
        *,
        scripts: Scripts,
        check_json: bool,
        reading: SubflowReading,
        lines: Mapping[Loc, int],
    ) -> None:
        self.raw = raw
        self.lines = lines
        self.scripts = scripts
        self.reading = reading
        self.limits = reading.limits
        self.check_json = check_json  # documents parsed from text hold JSON values by construction
        self.found: list[Found] = []
        self.graph_is_partial = False  # some step's depends_on is unknown: ancestry can't be judged

    def problems(self) -> list[Problem]:
        ordered = sorted(self.found, key=lambda found: file_position(self.raw, found[0]))
        return [
            Problem(line_place(format_location(loc) + label, line_at(self.lines, loc)), message)
            for loc, message, label in ordered
        ]

    def parse(self, source: str) -> Flow | None:
        header, flow_inputs, defaults = self._header()
        inherited = _Inherited.of(defaults)
        steps: list[Step] = []
        for index, (model, placeholder, dropped) in enumerate(self._step_models()):
            if model is not None:
                step = self._step(index, model, inherited, dropped)
                if "id" not in dropped:  # a step without an id of its own has no place in the graph
                    steps.append(step)
            elif placeholder is not None:
                steps.append(placeholder)
                self.graph_is_partial = True
        graph_findings = check_graph(steps, flow_inputs, check_ancestry=not self.graph_is_partial)
        self.found.extend((loc, message, "") for loc, message in graph_findings)
        if header is None or flow_inputs is None:
            return None
        self.found.extend((loc, message, "") for loc, message in check_flow_outputs(header.outputs, steps))
        if self.found:  # the caller raises FlowError
            return None
        document = _with_files_inlined(orjson.loads(orjson.dumps(self.raw)) if self.check_json else self.raw, steps)
        return Flow(header.name, tuple(steps), flow_inputs, header.description, source, document, header.outputs)

    def _header(self) -> tuple[FlowFields | None, dict[str, Any] | None, DefaultsModel]:
        """The flow's own fields; flow inputs are None when they are invalid (references to them can't
        be checked), defaults are salvaged field by field."""
        try:
            header: FlowFields | None = FlowHeader.model_validate(self.raw)
        except pydantic.ValidationError as exc:
            header = None
            self.found.extend(pydantic_findings(exc, FlowHeader, (), ""))
            bad = {error["loc"][0] for error in exc.errors() if error["loc"]}
        else:
            bad = set()
        flow_inputs = None if "inputs" in bad else dict(self.raw.get("inputs", {}))
        for name, value in (flow_inputs or {}).items():  # text documents too: a value may nest too deep
            self.found.extend((loc, message, "") for loc, message in value_findings(value, ("inputs", name)))
        raw_defaults = self.raw.get("defaults", {})
        try:
            defaults = DefaultsModel.model_validate(raw_defaults)
        except pydantic.ValidationError as exc:  # already reported by the header
            defaults = salvage(DefaultsModel, raw_defaults, exc)[0] or DefaultsModel()
        self.found.extend((("defaults", *loc), message, "") for loc, message in over_limits(defaults, self.limits))
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
                step_id = raw_step_id(raw_step)
                self.found.extend(pydantic_findings(exc, StepModel, ("steps", index), step_label(step_id)))
                model, dropped = salvage(StepModel, raw_step, exc, {"id": "-"})
                placeholder = Step(step_id, index, "", "") if model is None and step_id is not None else None
                models.append((model, placeholder, dropped))
        return models

    def _step(self, index: int, model: StepModel, inherited: _Inherited, dropped: frozenset[str]) -> Step:
        """The step from its model; `dropped` names invalid fields, already reported, left out of it."""
        where: Loc = ("steps", index)
        label = "" if "id" in dropped else step_label(str(model.id))
        given = model.model_fields_set
        written = dropped | given  # an invalid field is left out of the model, but it was written
        body = self._body(written, where, label)
        self._check_limits(model, body, where, label)
        if dropped and ("depends_on" in dropped or dropped - _STEP_FIELDS):
            # its real depends_on is invalid, or maybe misspelled as an unknown field: without it, references
            # to steps upstream of it would look like races
            self.graph_is_partial = True
        if body == "wait_for":
            return self._waiting_step(index, model, written, label)
        if body == "flow":
            return self._subflow_step(index, model, written, label)
        script = "" if body is None or body in dropped else self._script(model, body, where, label)
        step = Step(
            **_with_fields(dict(inherited.fields), model, _PLAIN & given),
            id=str(model.id),
            index=index,
            script=script,
            script_hash=self.scripts.hash(script),
            depends_on=tuple(map(str, model.depends_on)),
            retries=inherited.retries_of(model) if "retries" in given else inherited.retries,
            script_file=model.script_file if "script_file" in given else None,
            map=MapSpec(**_with_fields({}, model.map, _MAP_FIELDS)) if "map" in given else None,
        )
        self._check_inputs(step, where, label)
        if step.map is not None and step.map.as_ in step.inputs:
            message = f"the item input {step.map.as_!r} is also one of the step's inputs; name it another way"
            self.found.append(((*where, "map", "as"), message, label))
        return step

    def _check_limits(self, model: StepModel, body: str | None, where: Loc, label: str) -> None:
        for loc, message in over_limits(model, self.limits):
            if body != "wait_for" or loc[0] == "wait_for":  # its other fields are problems of their own
                self.found.append(((*where, *loc), message, label))

    def _check_inputs(self, step: Step, where: Loc, label: str) -> None:
        """In a mapping document, inputs JSON cannot say. Compiling the inputs walked them once, no deeper
        than MAX_NESTING: inputs nested deeper are left to the reference check, which reports them."""
        if self.check_json and not step.compiled_inputs.too_deep:
            for name, value in step.inputs.items():
                self.found.extend(
                    (loc, message, label) for loc, message in value_findings(value, (*where, "inputs", name))
                )

    def _body(self, written: frozenset[str], where: Loc, label: str) -> str | None:
        """Which of 'script', 'script_file', 'wait_for' and 'flow' the step has; None (reported) unless one."""
        bodies = [name for name in STEP_BODIES if name in written]
        if len(bodies) == 1:
            return bodies[0]
        if bodies:
            listed = " and ".join([", ".join(map(repr, bodies[:-1])), repr(bodies[-1])])
            has = f"has both {listed}" if len(bodies) == 2 else f"has {listed}"
            message = f"{has}; keep one (a step has exactly one of 'script', 'script_file', 'wait_for' or 'flow')"
        else:
            message = (
                "needs 'script' (Python source), 'script_file' (a path relative to the flow file), "
                "'wait_for' (the fields a signal must provide) or 'flow' (a flow to run as a child run)"
            )
        self.found.append((where, message, label))
        return None

    def _waiting_step(self, index: int, model: StepModel, written: frozenset[str], label: str) -> Step:
        """A step that waits for a signal; the fields about a script written on it are problems (those
        inherited from `defaults` are not: it does not inherit them)."""
        for name in (*SCRIPT_ONLY_FIELDS, "map"):
            if name in written:
                message = f"a 'wait_for' step runs no script; {name!r} does not apply"
                if name == "outputs":
                    message += " (its outputs are the 'wait_for' fields)"
                self.found.append((("steps", index, name), message, label))
        wait_for = model.wait_for if "wait_for" in model.model_fields_set else self._salvage_wait_for(index)
        plain = model.model_fields_set - _SCRIPT_ONLY
        if wait_for is None:
            return _scriptless_step(index, model, plain)
        body = WaitFor(**_with_fields({}, wait_for, _WAIT_FOR_FIELDS))
        return _scriptless_step(index, model, plain, outputs=body.fields, wait_for=body)

    def _subflow_step(self, index: int, model: StepModel, written: frozenset[str], label: str) -> Step:
        """A step that runs a flow as a child run: its outputs are the child's, its inputs the child's flow
        inputs; the fields about a script, and map and retries (it runs once), are problems on it."""
        where: Loc = ("steps", index)
        self.found.extend((loc, message, label) for loc, message in misplaced_findings(written, where))
        given = model.model_fields_set
        child, problems = parse_subflow(model.flow, self.reading, parse_flow) if "flow" in given else (None, [])
        self.found.extend(((*where, "flow"), problem, label) for problem in problems)
        outputs = tuple(child.outputs) if child is not None else None
        flow_file = model.flow if isinstance(model.flow, str) else None
        step = _scriptless_step(
            index, model, given - _NOT_FOR_SUBFLOWS, outputs=outputs, flow=child, flow_file=flow_file
        )
        self._check_inputs(step, where, label)
        if child is not None:
            self.found.extend((loc, message, label) for loc, message in subflow_input_findings(step, child, where))
        return step

    def _salvage_wait_for(self, index: int) -> WaitForModel | None:
        """An invalid wait_for (already reported) without its invalid fields, so that references to its
        fields can still be checked; None when its fields are what is invalid."""
        raw = self.raw["steps"][index].get("wait_for")
        try:
            return WaitForModel.model_validate(raw)
        except pydantic.ValidationError as exc:
            return salvage(WaitForModel, raw, exc)[0]

    def _script(self, model: StepModel, field_name: str, where: Loc, label: str) -> str:
        """The step's source from `field_name` ('script' or 'script_file'), its problems reported; each
        distinct script is compiled once."""
        where = (*where, field_name)
        source = model.script if field_name == "script" else self._read(model.script_file, where, label)
        if source:
            for line, message in self.scripts.problems(source):
                self.found.append((where, f"line {line}: {message}" if line else message, label))
        return source

    def _read(self, path: str, where: Loc, label: str) -> str:
        source, failure = self.scripts.read(path)
        if source is None:
            self.found.append((where, f"cannot read {path!r}: {failure}", label))
        return source or ""


def _scriptless_step(index: int, model: StepModel, plain: AbstractSet[str], **body: Any) -> Step:
    """A step that runs no script (it waits for a signal, or runs a flow): its plain fields `plain`, and `body`."""
    return Step(
        **_with_fields({}, model, _PLAIN & plain),
        id=str(model.id),
        index=index,
        script="",
        script_hash="",  # no script: nothing for an executor to look up
        depends_on=tuple(map(str, model.depends_on)),
        **body,
    )


def _with_files_inlined(raw: dict[str, Any], steps: list[Step]) -> dict[str, Any]:
    """The raw document (a copy the caller cannot change) with each script_file replaced by its source, and
    each sub-flow by its flow's document (itself inlined)."""
    if any(step.script_file is not None or step.flow is not None for step in steps):
        raw_steps = list(raw["steps"])
        for step in steps:
            if step.script_file is not None:
                inlined = {key: value for key, value in raw_steps[step.index].items() if key != "script_file"}
                raw_steps[step.index] = inlined | {"script": step.script}
            elif step.flow is not None:
                raw_steps[step.index] = raw_steps[step.index] | {"flow": step.flow.to_json()}
        raw["steps"] = raw_steps
    return raw


class _Inherited(NamedTuple):
    """What a step inherits from the flow's `defaults`, worked out once per parse."""

    fields: dict[str, Any]  # the plain step fields `defaults` has (`_INHERITED`), as a Step takes them
    retry_fields: dict[str, Any]  # a step's retries inherit field by field
    retries: RetryPolicy  # shared by the steps that write no retries

    @classmethod
    def of(cls, defaults: DefaultsModel) -> _Inherited:
        retry_fields = _with_fields({}, defaults.retries, _RETRY_FIELDS)
        return cls(_with_fields({}, defaults, _INHERITED), retry_fields, RetryPolicy(**retry_fields))

    def retries_of(self, model: StepModel) -> RetryPolicy:
        """The retries of a step that writes some: its own fields, the others from `defaults`."""
        return RetryPolicy(**_with_fields(dict(self.retry_fields), model.retries, model.retries.model_fields_set))


def _with_fields(fields: dict[str, Any], model: pydantic.BaseModel, names: Iterable[str]) -> dict[str, Any]:
    """`fields` with the model's fields `names` as validated, arrays as tuples: a frozen value's fields of the
    same name."""
    values = vars(model)  # a pydantic model keeps its field values in its __dict__: no call per field
    for name in names:
        value = values[name]
        fields[name] = tuple(value) if type(value) is list else value
    return fields


_STEP_LIST = pydantic.TypeAdapter(list[StepModel])
_STEP_FIELDS = frozenset(StepModel.model_fields)
_NOTHING: frozenset[str] = frozenset()
_SCRIPT_ONLY = frozenset(SCRIPT_ONLY_FIELDS)
_NOT_FOR_SUBFLOWS = frozenset(NOT_FOR_SUBFLOWS)
# The step fields with behaviour of their own, in `_step`. The others are plain: the Step field of the same
# name takes the value written, or else the one in the flow's `defaults` (`_INHERITED`), or else its default.
_OWN_BEHAVIOUR = frozenset({"id", "script", "script_file", "wait_for", "flow", "depends_on", "retries", "map"})
_PLAIN = _STEP_FIELDS - _OWN_BEHAVIOUR
_INHERITED = tuple(name for name in DefaultsModel.model_fields if name in _PLAIN)
_RETRY_FIELDS = tuple(RetriesModel.model_fields)  # a step's retries inherit field by field
_WAIT_FOR_FIELDS = tuple(WaitForModel.model_fields)
_MAP_FIELDS = tuple(MapModel.model_fields)
