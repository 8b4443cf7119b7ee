"""The run's shared context: a JSON dict that steps change only through merge operations.

A step sees a snapshot and emits operations (`set`, `incr`, `append`); the store applies them to the
current value atomically, so parallel branches never lose each other's writes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple


class ContextOpKind(StrEnum):
    SET = "set"
    INCR = "incr"
    APPEND = "append"


class ContextOp(NamedTuple):
    kind: ContextOpKind
    key: str
    value: Any


class ContextOpError(ValueError):
    """An operation that does not fit the current value (e.g. `incr` on a string)."""


def apply_op(context: dict[str, Any], op: ContextOp) -> None:
    """Apply one operation in place; raise ContextOpError when it does not fit the current value."""
    kind, key, value = op
    if kind == ContextOpKind.SET:
        context[key] = value
    elif kind == ContextOpKind.INCR:
        current = context.get(key, 0)
        if not _is_number(current) or not _is_number(value):
            raise ContextOpError(f"context key {key!r}: cannot incr {current!r} by {value!r}")
        context[key] = current + value
    elif kind == ContextOpKind.APPEND:
        current = context.setdefault(key, [])
        if not isinstance(current, list):
            raise ContextOpError(f"context key {key!r}: cannot append to {type(current).__name__}")
        current.append(value)
    else:
        raise ContextOpError(f"context key {key!r}: unknown operation {kind!r}")


def apply_ops(context: dict[str, Any], ops: list[ContextOp] | tuple[ContextOp, ...]) -> list[str]:
    """Apply operations in order; return the messages of those that did not fit (and were left out)."""
    rejected: list[str] = []
    for op in ops:
        try:
            apply_op(context, op)
        except ContextOpError as exc:
            rejected.append(str(exc))
    return rejected


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
