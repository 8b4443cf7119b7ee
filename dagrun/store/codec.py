"""JSON at the store's edge: every value a store keeps goes through orjson on the way in.

So a caller's later mutation never reaches the store, a value that is not JSON is refused by the call
that wrote it (StoreError naming the run and step), and every read hands out a fresh copy. The memory,
SQLite and Redis stores share these helpers so that they behave alike.
"""

from __future__ import annotations

from typing import Any

import orjson

from dagrun.contract.context import ContextOp, ContextOpKind, apply_ops
from dagrun.contract.executor import ErrorKind, StepError
from dagrun.errors import StoreError
from dagrun.store.base import ContextChange

EMPTY_OBJECT = "{}"


def encode_json(value: Any, *, where: str) -> str:
    """`value` as JSON text; StoreError naming `where` when it is not a JSON value."""
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise StoreError(f"{where}: not a JSON value: {exc}") from exc


def decode_json(text: str | bytes) -> Any:
    return orjson.loads(text)


def copy_json(value: Any, *, where: str) -> Any:
    """A deep copy of a JSON value; StoreError naming `where` when it is not one."""
    return orjson.loads(encode_json(value, where=where))


def encode_error(error: StepError | None) -> str | None:
    return None if error is None else orjson.dumps(error.to_json()).decode()


def decode_error(text: str | None) -> StepError | None:
    if text is None:
        return None
    data = orjson.loads(text)
    return StepError(ErrorKind(data["kind"]), data["type"], data["message"], data.get("line"))


def merge_context(current: str, ops: tuple[ContextOp, ...], *, run_id: str) -> tuple[str, ContextChange]:
    """Apply `ops` in order to the context stored as JSON text `current`.

    Returns the new text and the change: a fresh copy of the new value, the operations applied and the
    messages of those rejected. An operation whose value is not JSON is rejected like one that does not fit
    the current value.
    """
    context: dict[str, Any] = orjson.loads(current)
    applied: list[ContextOp] = []
    rejected: list[str] = []
    for op in ops:
        try:
            orjson.dumps(op.value)
        except TypeError as exc:
            rejected.append(f"context key {op.key!r}: not a JSON value: {exc}")
            continue
        misfits = apply_ops(context, (op,))
        rejected.extend(misfits)
        if not misfits:
            applied.append(op)
    text = encode_json(context, where=f"run {run_id!r} context")
    return text, ContextChange(orjson.loads(text), tuple(applied), rejected)


def context_ops_json(ops: tuple[ContextOp, ...]) -> list[list[Any]]:
    """An attempt's context writes as a store keeps them: ``[[op, key, value], ...]``."""
    return [[op.kind, op.key, op.value] for op in ops]


def context_ops_of(data: list[list[Any]]) -> tuple[ContextOp, ...]:
    """The context writes `context_ops_json` laid out, read back."""
    return tuple(ContextOp(ContextOpKind(kind), key, value) for kind, key, value in data)
