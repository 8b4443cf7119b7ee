"""Fixtures for the sandbox suites: `step` builds requests, `pools` starts pools and closes them all."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from dagrun.executor import HostFunction, StepRequest, script_hash
from dagrun.sandbox import SandboxPool, SandboxSettings

# small and quick: a memory bomb fails fast, a hung step is killed after a second
TEST_SETTINGS = SandboxSettings(processes=2, memory_mb=256, startup_timeout_s=20.0)


def make_step(script: str, **fields: Any) -> StepRequest:
    """A request for `script`; fields override run_id, step_id, attempt, inputs, context, timeout_s ..."""
    values: dict[str, Any] = {
        "run_id": "run-1",
        "step_id": "step-1",
        "attempt": 1,
        "inputs": {},
        "context": {},
        "timeout_s": 5.0,
    }
    values.update(fields)
    return StepRequest(script=script, script_hash=script_hash(script), **values)


@pytest.fixture
def step() -> Callable[..., StepRequest]:
    return make_step


class PoolFactory:
    """Starts pools and closes every pool it started."""

    def __init__(self) -> None:
        self.pools: list[SandboxPool] = []

    async def __call__(
        self, settings: SandboxSettings = TEST_SETTINGS, functions: Mapping[str, HostFunction] | None = None
    ) -> SandboxPool:
        pool = SandboxPool(settings, functions=functions)
        self.pools.append(pool)
        await pool.start()
        return pool

    async def close_all(self) -> None:
        for pool in reversed(self.pools):
            await pool.aclose()


@pytest.fixture
async def pools() -> AsyncIterator[PoolFactory]:
    factory = PoolFactory()
    try:
        yield factory
    finally:
        await factory.close_all()
