"""Fixtures of the executor contract suite.

`target` is each transport in turn (`TARGETS`), module-scoped: its shared worker, started on first use,
serves every case of a module, so the modules run in a module-scoped event loop. `executors` opens
executors of it for one case and closes them; `executor` is one. A case declares what it needs with
`@needs(Capability.X, ...)` and runs only on the targets that have it (no skips: the case does not exist
for the others); each case gets a fresh gate (`target.host.gate`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from dagrun.contract.executor import Executor
from tests.executors.conftest import Gate
from tests.executors.contract.targets import (
    InlineTarget,
    LocalTarget,
    RedisTarget,
    RemoteTarget,
    ServerTarget,
    Target,
)

Make = Callable[[pytest.FixtureRequest, Path], Target]
TARGETS: dict[str, tuple[type[Target], Make]] = {
    "local": (LocalTarget, lambda request, directory: LocalTarget()),
    "inline": (InlineTarget, lambda request, directory: InlineTarget()),
    "redis": (RedisTarget, lambda request, directory: RedisTarget(directory, request.getfixturevalue("redis_server"))),
    "ws": (ServerTarget, lambda request, directory: ServerTarget(directory, "ws")),
    "http": (ServerTarget, lambda request, directory: ServerTarget(directory, "http")),
}

needs = pytest.mark.needs  # registered in pyproject.toml


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each case on every target that has what it needs."""
    if "target" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("needs")
        needed = set(marker.args if marker else ())
        names = [name for name, (kind, _) in TARGETS.items() if needed <= kind.capabilities]
        metafunc.parametrize("target", names, indirect=True, scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Target]:
    _, make = TARGETS[request.param]
    made = make(request, tmp_path_factory.mktemp(f"contract-{request.param}"))
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture(autouse=True)
def _fresh_gate(target: Target) -> None:
    target.host.gate = Gate()


class Executors:
    """Opens executors of a target (its worker started first) and closes every one it opened."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.opened: list[Executor] = []

    async def __call__(self, **options: Any) -> Executor:
        await self.target.start()
        executor = self.target.open(**options)
        self.opened.append(executor)
        return executor

    def at(self, url: str, **options: Any) -> Executor:
        """An executor of a worker the case served or spawned at `url` (remote targets)."""
        assert isinstance(self.target, RemoteTarget)
        executor = self.target.open_at(url, **options)
        self.opened.append(executor)
        return executor

    async def close_all(self) -> None:
        for executor in reversed(self.opened):
            await executor.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def executors(target: Target) -> AsyncIterator[Executors]:
    factory = Executors(target)
    try:
        yield factory
    finally:
        await factory.close_all()


@pytest_asyncio.fixture(loop_scope="module")
async def executor(executors: Executors) -> Executor:
    return await executors()
