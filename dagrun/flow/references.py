"""The input template language: `${steps.ID.KEY}` and `${flow.KEY}` inside step input values.

A string that is exactly one reference becomes the referenced value, with its type; references inside a
longer string are interpolated as text (non-strings JSON-encoded); lists and dicts are walked (their keys
are never templated); `$${` stands for a literal `${`. Inputs are compiled once (`compile_inputs`) so that
resolving them per step costs nearly nothing when they hold no reference. An input value nests at most
MAX_NESTING arrays and objects: the compiler walks no deeper, and validation refuses what it left. Pure: no I/O.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import orjson

from dagrun.errors import FlowError, Problem, UnresolvedInput

logger = logging.getLogger(__name__)

Loc = tuple[str | int, ...]  # a place inside a JSON document: ("steps", 3, "inputs", "n")
Outputs = Mapping[str, Mapping[str, Any]]  # step id -> outputs, for succeeded steps only
Resolver = Callable[[Mapping[str, Any], Outputs], Any]

# `$${` first, so the escape wins over the reference it would otherwise start.
_TOKEN = re.compile(r"\$\$\{|\$\{([^{}]*)\}|\$\{")
_EXACT = re.compile(r"\$\{(?:steps\.([^.{}]+)\.([^{}]+)|flow\.([^{}]+))\}")
_BODY = re.compile(r"steps\.([^.]+)\.(.+)|flow\.(.+)", re.DOTALL)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_LISTED_KEYS = 10
# Arrays and objects in one input value, the value itself counting as 1. Far more than any real input
# needs, and far below what walking it by recursion (here) or encoding a whole run record with it (the
# stores' orjson stops at 255 levels) can take: a deeper value is a validation problem, not a crash.
MAX_NESTING = 64
TOO_DEEP = f"nested more than {MAX_NESTING} levels deep (arrays and objects); flatten it"


class Reference(NamedTuple):
    """One well-formed reference; `step_id` is None for `${flow.KEY}`. `loc` is where it sits inside the
    value that was scanned (``("n", 0)`` for the first item of input ``n``)."""

    step_id: str | None
    key: str
    text: str
    loc: Loc = ()


class MalformedReference(NamedTuple):
    """Something that starts like a reference but is not one; `reason` says why."""

    text: str
    reason: str
    loc: Loc = ()


def format_location(loc: Loc) -> str:
    """``("steps", 3, "depends_on", 0)`` -> ``steps[3].depends_on[0]``; odd keys are quoted: ``inputs["a b"]``."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _IDENTIFIER.fullmatch(part):
            parts.append(f".{part}" if parts else part)
        else:
            parts.append(f"[{orjson.dumps(part).decode()}]")
    return "".join(parts)


def _parse_body(body: str, text: str, loc: Loc) -> Reference | MalformedReference:
    match = _BODY.fullmatch(body)
    if match is None:
        return MalformedReference(text, "expected '${steps.ID.KEY}' or '${flow.KEY}'", loc)
    step_id, step_key, flow_key = match.groups()
    if flow_key is not None:
        return Reference(None, flow_key, text, loc)
    return Reference(step_id, step_key, text, loc)


def _tokenize(text: str, loc: Loc) -> list[str | Reference | MalformedReference]:
    """Literal text (escapes undone) and references, in order; adjacent literals are merged."""
    parts: list[str | Reference | MalformedReference] = []
    literal: list[str] = []
    position = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[position : match.start()])
        position = match.end()
        if match.group(0) == "$${":
            literal.append("${")
            continue
        _flush(literal, parts)
        if match.group(1) is None:
            snippet = text[match.start() : match.start() + 40]
            parts.append(MalformedReference(snippet, "'${' is never closed by '}'", loc))
        else:
            parts.append(_parse_body(match.group(1), match.group(0), loc))
    literal.append(text[position:])
    _flush(literal, parts)
    return parts


def _flush(literal: list[str], parts: list[str | Reference | MalformedReference]) -> None:
    joined = "".join(literal)
    literal.clear()
    if joined:
        parts.append(joined)


def parse_reference(text: str, loc: Loc = ()) -> Reference | MalformedReference:
    """`text` as exactly one reference, or why it is not one."""
    parts = _tokenize(text, loc)
    if len(parts) == 1 and not isinstance(parts[0], str):
        return parts[0]
    malformed = [part for part in parts if isinstance(part, MalformedReference)]
    return malformed[0] if malformed else MalformedReference(text, "expected '${steps.ID.KEY}' or '${flow.KEY}'", loc)


def lookup(reference: Reference, where: object) -> Resolver:
    """Resolves `reference` like an input does (None for a step that did not succeed; UnresolvedInput for a
    missing key or flow input); `where` names what holds it in messages."""
    return _Lookup(reference, where)


def escape(text: str) -> str:
    """`text` as an input string that resolves to itself: every `${` becomes `$${`."""
    return text.replace("${", "$${")


def find_references(value: Any, *, malformed: list[MalformedReference] | None = None, loc: Loc = ()) -> list[Reference]:
    """Every well-formed reference in a JSON value, in document order; malformed ones are appended to
    `malformed` when given (and otherwise ignored)."""
    found = _Found()
    _compile_value(value, loc, "", found, 1)
    if malformed is not None:
        malformed.extend(found.malformed)
    return found.references


class _Found:
    """What compiling a value met: the references, for validation, the malformed ones, and where values
    nest too deep (left unwalked)."""

    __slots__ = ("malformed", "references", "too_deep")

    def __init__(self) -> None:
        self.references: list[Reference] = []
        self.malformed: list[MalformedReference] = []
        self.too_deep: list[Loc] = []


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


class _Where:
    """Names an input in messages; formatted only when a message is built (compiling stays cheap)."""

    __slots__ = ("loc", "prefix")

    def __init__(self, prefix: str, loc: Loc) -> None:
        self.prefix = prefix
        self.loc = loc

    def __str__(self) -> str:
        return f"{self.prefix}input {format_location(self.loc)!r}"


class _Lookup:
    """Resolves one reference; `where` names the input for messages."""

    __slots__ = ("key", "step_id", "where")

    def __init__(self, reference: Reference, where: object) -> None:
        self.step_id = reference.step_id
        self.key = reference.key
        self.where = where

    def __call__(self, flow_inputs: Mapping[str, Any], outputs_of: Outputs) -> Any:
        if self.step_id is None:
            try:
                return flow_inputs[self.key]
            except KeyError:
                raise UnresolvedInput(f"{self.where}: flow input {self.key!r} has no value") from None
        return _step_output(outputs_of, self.step_id, self.key, self.where)


def _step_output(outputs_of: Outputs, step_id: str, key: str, where: object) -> Any:
    outputs = outputs_of.get(step_id)
    if outputs is None:  # the step did not succeed; this step runs anyway because of its run_if
        return None
    try:
        return outputs[key]
    except KeyError:
        produced = sorted(outputs)
        listed = ", ".join(produced[:_MAX_LISTED_KEYS]) + (", ..." if len(produced) > _MAX_LISTED_KEYS else "")
        raise UnresolvedInput(
            f"{where}: step {step_id!r} succeeded without output {key!r} (its outputs: {listed or 'none'})"
        ) from None


def _compile_string(text: str, loc: Loc, prefix: str, found: _Found) -> tuple[bool, Any]:
    if "${" not in text:
        return False, text
    where = _Where(prefix, loc)
    exact = _EXACT.fullmatch(text)
    if exact is not None:  # the common case, without tokenizing
        step_id, step_key, flow_key = exact.groups()
        reference = (
            Reference(step_id, step_key, text, loc) if flow_key is None else Reference(None, flow_key, text, loc)
        )
        found.references.append(reference)
        return True, _Lookup(reference, where)
    parts = _tokenize(text, loc)
    for part in parts:
        if isinstance(part, MalformedReference):
            found.malformed.append(part)
        elif isinstance(part, Reference):
            found.references.append(part)
    if not any(isinstance(part, Reference) for part in parts):
        return False, "".join(part for part in parts if isinstance(part, str))
    if len(parts) == 1 and isinstance(parts[0], Reference):
        return True, _Lookup(parts[0], where)
    pieces = [
        part if isinstance(part, str) else _Lookup(part, where)
        for part in parts
        if not isinstance(part, MalformedReference)
    ]

    def interpolate(flow_inputs: Mapping[str, Any], outputs_of: Outputs) -> str:
        return "".join(
            piece if isinstance(piece, str) else _as_text(piece(flow_inputs, outputs_of)) for piece in pieces
        )

    return True, interpolate


def _compile_value(value: Any, loc: Loc, prefix: str, found: _Found, depth: int) -> tuple[bool, Any]:
    """(False, constant) or (True, resolver); the references met are added to `found`. `depth` counts the
    arrays and objects `value` is in, itself included; past MAX_NESTING, `value` is a constant, not walked."""
    if isinstance(value, str):
        return _compile_string(value, loc, prefix, found)
    if depth > MAX_NESTING and isinstance(value, list | dict):
        found.too_deep.append(loc)
        return False, value
    if isinstance(value, list):
        items = [
            _compile_value(element, (*loc, index), prefix, found, depth + 1) for index, element in enumerate(value)
        ]
        if not any(dynamic for dynamic, _ in items):
            return False, [item for _, item in items]
        return True, lambda flow_inputs, outputs_of: [
            item(flow_inputs, outputs_of) if dynamic else item for dynamic, item in items
        ]
    if isinstance(value, dict):
        entries = [
            (key, *_compile_value(element, (*loc, key), prefix, found, depth + 1)) for key, element in value.items()
        ]
        if not any(dynamic for _, dynamic, _ in entries):
            return False, {key: item for key, _, item in entries}
        return True, lambda flow_inputs, outputs_of: {
            key: item(flow_inputs, outputs_of) if dynamic else item for key, dynamic, item in entries
        }
    return False, value


class CompiledInputs:
    """A step's inputs, ready to resolve. Constants are shared between resolutions: treat the result as
    read-only below its top level."""

    __slots__ = ("_dynamic", "_exact_flow", "_exact_steps", "_template", "malformed", "references", "too_deep")

    def __init__(self, inputs: Mapping[str, Any], *, step_id: str | None = None) -> None:
        """Never raises: malformed references are listed in `malformed` (and resolve as text), inputs
        nested deeper than MAX_NESTING in `too_deep` (their references are not looked for)."""
        prefix = f"step {step_id!r} " if step_id is not None else ""
        found = _Found()
        self._template: dict[str, Any] = {}
        exact_steps: list[tuple[str, str, str, object]] = []
        exact_flow: list[tuple[str, str, object]] = []
        dynamic: list[tuple[str, Resolver]] = []
        for name, value in inputs.items():
            is_dynamic, item = _compile_value(value, (name,), prefix, found, 1)
            self._template[name] = None if is_dynamic else item
            if not is_dynamic:
                continue
            # exact references are the common case (a join step may hold thousands): no call per input
            if isinstance(item, _Lookup) and item.step_id is not None:
                exact_steps.append((name, item.step_id, item.key, item.where))
            elif isinstance(item, _Lookup):
                exact_flow.append((name, item.key, item.where))
            else:
                dynamic.append((name, item))
        # every reference with its place inside the inputs, in document order: what validation checks
        self.references = tuple(found.references)
        self.malformed = tuple(found.malformed)
        self.too_deep = tuple(dict.fromkeys(loc[:1] for loc in found.too_deep))  # the inputs, once each
        self._exact_steps = tuple(exact_steps)
        self._exact_flow = tuple(exact_flow)
        self._dynamic = tuple(dynamic)

    @property
    def is_static(self) -> bool:
        """True when no input holds a reference: `resolve` only copies a dict."""
        return not (self._exact_steps or self._exact_flow or self._dynamic)

    def resolve(self, flow_inputs: Mapping[str, Any], outputs_of: Outputs) -> dict[str, Any]:
        """The inputs with every reference replaced. A referenced step missing from `outputs_of` (it did
        not succeed) gives None; UnresolvedInput when a succeeded step lacks the key or a flow input is
        missing."""
        result = self._template.copy()
        for name, step_id, key, where in self._exact_steps:
            outputs = outputs_of.get(step_id)
            if outputs is None:
                continue  # the template already holds None
            try:
                result[name] = outputs[key]
            except KeyError:
                _step_output(outputs_of, step_id, key, where)  # raises with the full message
        for name, key, where in self._exact_flow:
            if key not in flow_inputs:
                raise UnresolvedInput(f"{where}: flow input {key!r} has no value")
            result[name] = flow_inputs[key]
        for name, resolver in self._dynamic:
            result[name] = resolver(flow_inputs, outputs_of)
        return result


def compile_inputs(inputs: Mapping[str, Any], *, step_id: str | None = None) -> CompiledInputs:
    """Compile a step's raw inputs; `step_id` names the step in UnresolvedInput messages. Raises
    FlowError for a malformed reference or an input nested too deep (validated flows have neither)."""
    compiled = CompiledInputs(inputs, step_id=step_id)
    prefix = f"step {step_id!r} " if step_id is not None else ""
    problems = [
        Problem(format_location(bad.loc), f"{prefix}malformed reference {bad.text!r}: {bad.reason}")
        for bad in compiled.malformed
    ]
    problems += [Problem(format_location(loc), f"{prefix}input {TOO_DEEP}") for loc in compiled.too_deep]
    if problems:
        raise FlowError(problems)
    return compiled
