"""A step that runs another flow, a sub-flow (`"flow": "etl.json"`, or the flow inline), as a child run.

The child is parsed with the parent's script check and limits, and kept on the step: a stored run is
self-contained. A file is read by the caller's `FlowReader` (the loader: relative to the flow file that
names it), which says the file's identity (its real path): a file that is already one of the flows the
child would be inside is a cycle of flows calling flows, refused with its chain. The step's inputs are
the child's flow inputs (each one the child declares); its outputs are the child's declared `outputs`.
Pure: reading is the reader's business.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from dagrun.errors import FlowError
from dagrun.flow.limits import FlowLimits
from dagrun.flow.references import Loc
from dagrun.flow.schema import NOT_FOR_SUBFLOWS
from dagrun.flow.scripts import ScriptChecker, ScriptReader

if TYPE_CHECKING:
    from dagrun.flow.model import Flow, Step

MAX_SUBFLOW_DEPTH = 16  # flows inside flows: far past any real use, far below Python's recursion limit


class Enclosing(NamedTuple):
    """One flow a flow is read within (itself included): a cycle check through files, and the depth."""

    identity: str | None  # a file's real path: the same file however it was named; None for a document
    source: str  # as messages name it


class FlowFile(NamedTuple):
    """A sub-flow's file as its `FlowReader` read it, with the readers of what it names in turn."""

    document: bytes | dict[str, Any]
    source: str  # its path as messages name it
    identity: str
    lines: Mapping[Loc, int] | None  # a YAML file's places
    read_script: ScriptReader  # its script_files, relative to it
    read_flow: FlowReader  # its own sub-flow files, relative to it


FlowReader = Callable[[str], FlowFile]  # "flow" as written -> its file; raises OSError


class SubflowReading(NamedTuple):
    """What one parse passes on to parse the sub-flows of its steps."""

    read_flow: FlowReader | None  # None: a document, whose sub-flows must be inline
    read_script: ScriptReader | None
    check_script: ScriptChecker
    limits: FlowLimits
    nesting: tuple[Enclosing, ...]  # the flow being parsed and those it is within, outermost first


ParseFlow = Callable[..., "Flow"]  # `parser.parse_flow`, passed in: the parser imports this module


def parse_subflow(
    spec: str | dict[str, Any], reading: SubflowReading, parse: ParseFlow
) -> tuple[Flow | None, list[str]]:
    """The child flow of a step's `flow` (a file or the flow inline), or None and its problems."""
    if len(reading.nesting) > MAX_SUBFLOW_DEPTH:
        return None, [f"sub-flows nest more than {MAX_SUBFLOW_DEPTH} deep; flatten them"]
    if isinstance(spec, dict):
        within = (*reading.nesting, Enclosing(None, "the inline flow"))
        return _parsed(spec, "", reading, parse, within=within, lines=None)
    if reading.read_flow is None:
        return None, ["a flow given as a document must inline its sub-flows ('flow': {...})"]
    try:
        file = reading.read_flow(spec)
    except OSError as exc:
        return None, [f"cannot read {spec!r}: {exc.strerror or exc}"]
    except FlowError as exc:  # a YAML file that is not a document
        return None, [str(exc)]
    identities = [enclosing.identity for enclosing in reading.nesting]
    if file.identity in identities:
        chain = [enclosing.source for enclosing in reading.nesting[identities.index(file.identity) :]]
        return None, [f"flows call each other in a cycle: {' -> '.join([*chain, file.source])}"]
    child_reading = reading._replace(read_flow=file.read_flow, read_script=file.read_script)
    within = (*reading.nesting, Enclosing(file.identity, file.source))
    return _parsed(file.document, file.source, child_reading, parse, within=within, lines=file.lines)


def _parsed(
    document: bytes | dict[str, Any],
    source: str,
    reading: SubflowReading,
    parse: ParseFlow,
    *,
    within: tuple[Enclosing, ...],
    lines: Mapping[Loc, int] | None,
) -> tuple[Flow | None, list[str]]:
    try:
        flow = parse(
            document, source=source or "<flow>", read_script=reading.read_script, read_flow=reading.read_flow,
            check_script=reading.check_script, limits=reading.limits, lines=lines, nesting=within,
        )  # fmt: skip
    except FlowError as exc:
        return None, [f"{source}: {problem}" if source else str(problem) for problem in exc.problems]
    return flow, []


def misplaced_findings(written: frozenset[str], where: Loc) -> list[tuple[Loc, str]]:
    """The fields written on a sub-flow step that do not apply to one (`NOT_FOR_SUBFLOWS`)."""
    findings: list[tuple[Loc, str]] = []
    for name in NOT_FOR_SUBFLOWS:
        if name in written:
            because = "its outputs are the child flow's 'outputs'" if name == "outputs" else "it runs once"
            message = f"a 'flow' step runs a child run, not a script; {name!r} does not apply ({because})"
            findings.append(((*where, name), message))
    return findings


def subflow_input_findings(step: Step, child: Flow, where: Loc) -> list[tuple[Loc, str]]:
    """A step's inputs the child flow does not declare as flow inputs, each at `inputs.NAME`."""
    declared = ", ".join(sorted(child.inputs)) or "none"
    return [
        ((*where, "inputs", name), f"flow {child.name!r} declares no input {name!r} (it declares: {declared})")
        for name in step.inputs
        if name not in child.inputs
    ]
