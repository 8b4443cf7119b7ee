"""Context merge operations: each applies to the current value, and misfits are reported, not raised."""

from __future__ import annotations

import pytest

from dagrun.contract.context import ContextOp, ContextOpError, ContextOpKind, apply_op, apply_ops


def test_set_incr_and_append_merge_into_the_current_value() -> None:
    context: dict[str, object] = {"counter": 1}
    rejected = apply_ops(
        context,
        (
            ContextOp(ContextOpKind.INCR, "counter", 10),
            ContextOp(ContextOpKind.INCR, "fresh", 2.5),
            ContextOp(ContextOpKind.APPEND, "log", "a"),
            ContextOp(ContextOpKind.APPEND, "log", "b"),
            ContextOp(ContextOpKind.SET, "region", "eu"),
        ),
    )
    assert rejected == []
    assert context == {"counter": 11, "fresh": 2.5, "log": ["a", "b"], "region": "eu"}


@pytest.mark.parametrize(
    ("start", "op", "message"),
    [
        ({"n": "x"}, ContextOp(ContextOpKind.INCR, "n", 1), "cannot incr 'x' by 1"),
        ({"n": 1}, ContextOp(ContextOpKind.INCR, "n", True), "cannot incr 1 by True"),
        ({"n": 1}, ContextOp(ContextOpKind.APPEND, "n", 2), "cannot append to int"),
    ],
)
def test_an_operation_that_does_not_fit_is_rejected_and_the_rest_still_apply(
    start: dict[str, object], op: ContextOp, message: str
) -> None:
    context = dict(start)
    rejected = apply_ops(context, (op, ContextOp(ContextOpKind.SET, "after", True)))
    assert len(rejected) == 1 and message in rejected[0]
    assert context == {**start, "after": True}
    with pytest.raises(ContextOpError):
        apply_op(dict(start), op)
