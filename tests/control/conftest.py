"""Fixtures for the control-plane tests: stores of every kind, and small flows that wait for a person."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dagrun import Flow, parse_flow
from tests.store.conftest import StoreFactory


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores of one kind that share their runs (for memory: call it once, there is no sharing)."""
    redis_url: str = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    factory = StoreFactory(request.param, tmp_path / "dagrun.db", redis_url=redis_url)
    try:
        yield factory
    finally:
        await factory.close_all()


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
