"""Fixtures for the sandbox suites: `step` builds requests, `pools` starts pools and closes them all,
`run_in_process` runs a script under the policy without a child."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from dagrun.contract.executor import HostFunction, StepRequest, script_hash
from dagrun.sandbox import SandboxPool, SandboxSettings, compile_script
from dagrun.sandbox.policy import build_base_globals, step_globals
from dagrun.sandbox.scope import StepScope, Violations

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


def run_in_process(
    source: str,
    *,
    inputs: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    max_log_bytes: int = 1000,
    max_context_bytes: int = 1000,
) -> tuple[StepScope, Violations]:
    """Exec a script with the sandbox's globals in this process (no limits: policy checks only)."""
    violations = Violations()
    scope = StepScope(
        context=context or {}, violations=violations, max_log_bytes=max_log_bytes, max_context_bytes=max_context_bytes
    )
    namespace = step_globals(
        build_base_globals(violations),
        scope,
        inputs=inputs or {},
        attempt=1,
        step_id="s",
        run_id="r",
        context_id="default",
    )
    exec(compile_script(source), namespace)
    return scope, violations


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
