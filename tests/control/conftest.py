"""Fixtures for the control-plane tests: stores of every kind, and small flows that wait for a person."""

from __future__ import annotations

from typing import Any

from dagrun import Flow, parse_flow
from tests.store.conftest import store as stores  # noqa: F401  (the store suite's fixture: stores of each kind that share their runs)


def gated_flow(name: str = "gated", *, timeout_s: float | None = None) -> Flow:
    """first -> gate (waits for a signal with `ok`) -> after -> last, and `side` that needs nothing."""
    wait_for: dict[str, Any] = {"fields": ["ok"]}
    if timeout_s is not None:
        wait_for["timeout_s"] = timeout_s
    return parse_flow(
        {
            "name": name,
            "steps": [
                {"id": "first", "script": "outputs['n'] = 1\ncontext.incr('hits')"},
                {"id": "gate", "depends_on": ["first"], "wait_for": wait_for},
                {
                    "id": "after",
                    "depends_on": ["gate"],
                    "script": "outputs['n'] = inputs['n'] + 1\ncontext.incr('hits')",
                    "inputs": {"n": "${steps.first.n}", "ok": "${steps.gate.ok}"},
                },
                {
                    "id": "last",
                    "depends_on": ["after"],
                    "script": "outputs['done'] = inputs['n']",
                    "inputs": {"n": "${steps.after.n}"},
                },
                {"id": "side", "script": "outputs['side'] = True"},
            ],
        }
    )


from tests.executors.conftest import redis_workers  # noqa: E402, F401  (the fixture, for the acceptance test)
