"""A step's condition (`when`): whether it runs, decided from one referenced value, without any eval.

The language is one of `${REF}` (a JSON boolean), `not ${REF}`, or `${REF} OP LITERAL` with OP one of
`==`, `!=`, `<`, `<=`, `>`, `>=` and LITERAL a JSON scalar; REF is `steps.ID.KEY` or `flow.KEY`, parsed by
`references`. `==` and `!=` compare JSON values (true is not 1; different types are unequal); the order
operators compare two numbers or two strings, anything else is an error at run time, as is a reference to
a step that did not succeed. A condition is compiled once and never raises then: a malformed one carries
its reason (validation reports it). Pure: no I/O.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from dagrun.errors import UnresolvedInput
from dagrun.flow.problems import json_type, short_json
from dagrun.flow.references import MalformedReference, Outputs, Reference, lookup, parse_reference
from dagrun.flow.schema import CONDITION_GRAMMAR

_SHAPE = re.compile(
    r"(?P<negated>not\b\s*)?(?P<reference>\$\{[^{}]*\}?)\s*(?:(?P<operator>[=!<>]+)\s*(?P<literal>.*))?"
)
_ORDERINGS: Mapping[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_OPERATORS = frozenset({"==", "!=", *_ORDERINGS})


class Condition:
    """A compiled `when`. `reference` is None and `malformed` says why when the text is not a condition."""

    __slots__ = ("_value_of", "literal", "malformed", "negated", "operator", "reference", "text", "where")

    def __init__(self, text: str, *, step_id: str | None = None) -> None:
        self.text = text
        self.where = f"{'' if step_id is None else f'step {step_id!r} '}condition {text!r}"
        self.negated = False
        self.operator: str | None = None
        self.literal: Any = None
        self.reference: Reference | None = None
        self.malformed: str | None = None
        parsed = self._parse(text.strip())
        if isinstance(parsed, str):
            self.malformed = parsed
        else:
            self.reference = parsed
            self._value_of = lookup(parsed, self.where)

    def _parse(self, text: str) -> Reference | str:
        """The reference, with the operator and literal set; or what is wrong."""
        shape = _SHAPE.fullmatch(text)
        if shape is None:
            return f"expected {CONDITION_GRAMMAR}" if text else f"a condition is empty; write {CONDITION_GRAMMAR}"
        reference = parse_reference(shape["reference"])
        if isinstance(reference, MalformedReference):
            return f"malformed reference {reference.text!r}: {reference.reason}"
        self.negated = shape["negated"] is not None
        if shape["operator"] is None:
            return reference
        if shape["operator"] not in _OPERATORS:
            return f"unknown operator {shape['operator']!r}; use one of ==, !=, <, <=, >, >="
        if self.negated:
            return "'not' takes a reference alone; to negate a comparison, write the opposite operator"
        problem = self._set_literal(shape["operator"], shape["literal"])
        return reference if problem is None else problem

    def _set_literal(self, operator_text: str, literal_text: str) -> str | None:
        if literal_text.startswith("${"):
            return "a reference is compared with a JSON value, not with another reference"
        try:
            literal = orjson.loads(literal_text)
        except orjson.JSONDecodeError:
            literal = []  # refused below, with the same message
        if isinstance(literal, list | dict):
            return (
                f'expected a JSON number, "string", true, false or null after {operator_text!r}, not {literal_text!r}'
            )
        if operator_text in _ORDERINGS and not _is_ordered(literal):
            return f"{operator_text!r} compares numbers or strings, not {json_type(literal)}; use == or !="
        self.operator, self.literal = operator_text, literal
        return None

    def holds(self, flow_inputs: Mapping[str, Any], outputs_of: Outputs) -> bool:
        """Whether the condition is true. UnresolvedInput, naming the condition and the value's type, when
        the value is not one the condition can judge, the referenced step did not succeed, or (never in a
        validated flow) the condition is malformed."""
        if self.reference is None:
            raise UnresolvedInput(f"{self.where} is malformed: {self.malformed}")
        step_id = self.reference.step_id
        if step_id is not None and step_id not in outputs_of:
            raise UnresolvedInput(f"{self.where}: step {step_id!r} did not succeed, so it has no value to judge")
        value = self._value_of(flow_inputs, outputs_of)
        if self.operator is None:
            if type(value) is not bool:
                raise UnresolvedInput(f"{self.where}: the value is {_described(value)}, not a boolean")
            return value is not self.negated
        if self.operator in ("==", "!="):
            return _json_equal(value, self.literal) is (self.operator == "==")
        if not _is_ordered(value) or (type(value) is str) != (type(self.literal) is str):
            raise UnresolvedInput(
                f"{self.where}: the value is {_described(value)}, which {self.operator!r} cannot compare "
                f"with {json_type(self.literal)}"
            )
        return _ORDERINGS[self.operator](value, self.literal)


def _is_ordered(value: Any) -> bool:
    """A number or a string: what the order operators compare (JSON true and false are not numbers)."""
    return type(value) in (int, float, str)


def _json_equal(value: Any, literal: Any) -> bool:
    if type(value) is bool or type(literal) is bool:  # Python's True == 1 is not JSON's
        return value is literal
    return bool(value == literal)


def _described(value: Any) -> str:
    return "null" if value is None else f"{json_type(value)} ({short_json(value)})"
