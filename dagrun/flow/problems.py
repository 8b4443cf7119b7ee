"""How a flow's mistakes are told: JSON and pydantic errors as problems with their place (`steps[3].id`).

Each problem names where (a JSON path, ordered as in the file), then what, then the fix when there is one.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import reprlib
import typing
from collections.abc import Mapping
from typing import Any

import orjson
import pydantic
from pydantic import BaseModel
from pydantic_core import ErrorDetails

from dagrun.errors import Problem
from dagrun.flow.references import MAX_NESTING, TOO_DEEP, Loc, format_location
from dagrun.flow.schema import ID_RULE, ID_UNION_TAGS, STEP_ID_RE

Found = tuple[Loc, str, str]  # where, what, and a label for the path: " (step 'load')" or ""
_NO_GOT = frozenset({"missing", "extra_forbidden", "value_error", "too_short"})
_OBJECT_ERRORS = frozenset({"model_type", "model_attributes_type", "dict_type"})
# Enough of JSON's tokens to follow its structure: strings (with their escapes), punctuation, the rest.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},:]|[^\s\[\]{},:"]+')


def decoded(document: str | bytes) -> str | Problem:
    """The text of a flow file, JSON or YAML: UTF-8 without the byte order mark editors on Windows like to start
    files with; else the problem, with its place."""
    if isinstance(document, str):
        return document.removeprefix("\ufeff")
    try:
        return document.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        return utf8_problem(document, exc)


def utf8_problem(data: bytes, exc: UnicodeDecodeError) -> Problem:
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - data.rfind(b"\n", 0, exc.start)
    return Problem(f"line {line}, column {column}", "not UTF-8 text")


def json_problem(text: str, error: json.JSONDecodeError) -> Problem:
    if is_too_deep(error):
        return Problem(format_location(nesting_place(nesting_path(text, error.pos))), TOO_DEEP)
    try:  # orjson parses; the standard library words the errors people know
        json.loads(text)
    except json.JSONDecodeError as standard:
        error = standard
    except RecursionError:
        pass
    return Problem(f"line {error.lineno}, column {error.colno}", _lower_first(error.msg))


def is_too_deep(error: json.JSONDecodeError) -> bool:
    """Whether orjson refused the text for nesting past its own limit (1024 levels, far past MAX_NESTING)."""
    message = error.msg.lower()
    return "depth" in message or "recursion" in message


def nesting_path(text: str, offset: int) -> Loc:
    """The place of the innermost array or object open at `offset` in `text`, which is JSON up to there
    (where a parser stopped): followed token by token, so that no depth is too deep to follow."""
    path: list[str | int] = []  # per open container: the index or key of its current element
    key = ""
    for match in _JSON_TOKEN.finditer(text, 0, offset):
        token = match.group()
        if token in ("[", "{"):
            path.append(0 if token == "[" else "")
        elif token in ("]", "}"):
            path.pop()
        elif token == "," and isinstance(path[-1], int):
            path[-1] += 1
        elif token == ":":
            path[-1] = key
        elif token.startswith('"'):
            key = orjson.loads(token)
    return tuple(path[:-1])


def nesting_place(loc: Loc) -> Loc:
    """Where a value nested too deep is reported: the step input or flow input holding it, or else the
    field of the flow, of its defaults or of its step."""
    if not loc or not isinstance(loc[0], str):
        return ()  # the document itself: not a flow (an object) anyway
    kept = {"steps": 4 if loc[2:3] == ("inputs",) else 3, "inputs": 2, "defaults": 2}.get(loc[0], 1)
    return loc[:kept]


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def short_json(value: Any) -> str:
    """A value as short JSON text for a message (cut at 60 characters)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # orjson would write null
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # not JSON, or nested past orjson's limit: reprlib stops a few levels down
        text = reprlib.repr(value)
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
    return message if kind in _NO_GOT else f"{message} (got {short_json(error['input'])})"


def _is_step_id(loc: Loc) -> bool:
    return bool(loc) and loc[-1] in ID_UNION_TAGS and (loc[-2:-1] == ("id",) or loc[-3:-2] == ("depends_on",))


def _step_id_message(error: ErrorDetails) -> str:
    if error["type"] == "string_pattern_mismatch":
        return f"step id {error['input']!r} must be {ID_RULE}"
    return f"a step id is a string or an integer (got {short_json(error['input'])})"


def pydantic_findings(exc: pydantic.ValidationError, model: type[BaseModel], prefix: Loc, label: str) -> list[Found]:
    found: list[Found] = []
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
        elif loc == ("wait_for", "fields") and error["type"] == "too_short":
            where, message = loc, "a 'wait_for' needs at least one field for the signal to provide"
        else:
            where, message = loc, _error_message(error)
        found.append(((*prefix, *where), message, "" if loc[:1] == ("id",) else label))
    return found


def salvage(
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


def value_findings(value: Any, loc: Loc) -> list[tuple[Loc, str]]:
    """What a flow cannot hold in `value` (at `loc`): things JSON cannot say (only possible in mapping
    documents), and `loc` itself when `value` nests deeper than MAX_NESTING (not walked below that, so
    that even a value that contains itself is reported)."""
    found: list[tuple[Loc, str]] = []
    stack: list[tuple[Any, Loc, int]] = [(value, loc, 1)]
    too_deep = False
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, dict | list) and depth > MAX_NESTING:
            too_deep = True
        elif isinstance(item, dict):
            for key, element in item.items():
                if isinstance(key, str):
                    stack.append((element, (*where, key), depth + 1))
                else:
                    found.append((where, f"object keys must be strings (got {key!r})"))
        elif isinstance(item, list):
            stack.extend((element, (*where, index), depth + 1) for index, element in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            found.append((where, f"not a JSON value (got {item!r})"))
        elif not (item is None or isinstance(item, str | int | float)):
            found.append((where, f"not a JSON value (got {type(item).__name__})"))
    if too_deep:
        found.append((loc, TOO_DEEP))
    return sorted(found)


def raw_step_id(raw_step: Any) -> str | None:
    """The id of a step that failed validation, when it has a usable one."""
    step_id = raw_step.get("id") if isinstance(raw_step, dict) else None
    if isinstance(step_id, int) and not isinstance(step_id, bool):
        return str(step_id)
    return step_id if isinstance(step_id, str) and STEP_ID_RE.fullmatch(step_id) else None


def step_label(step_id: str | None) -> str:
    return f" (step {step_id!r})" if step_id is not None else ""


def line_place(where: str, line: int | None) -> str:
    """A problem's place with the line of the file it is on, when known: ``line 12, steps[3].id``."""
    if line is None:
        return where
    return f"line {line}, {where}" if where else f"line {line}"


def line_at(lines: Mapping[Loc, int], loc: Loc) -> int | None:
    """The line of `loc`, or of the nearest place holding it that `lines` knows (a missing field: its object's);
    None for the document itself, which is the whole file."""
    for end in range(len(loc), 0, -1):
        line = lines.get(loc[:end])
        if line is not None:
            return line
    return None


def file_position(raw: Any, loc: Loc) -> tuple[int, ...]:
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
