"""Fixtures for the store suites: `store` opens stores of one kind and closes them all at teardown.

For redis, every store a test opens uses the session's redis-server (tests/conftest.py) under the test's
own key prefix, so a second `open()` reads what the first wrote, and tests never see each other's runs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from dagrun.contract.states import RunStatus
from dagrun.store import MemoryStore, RedisStore, RunRecord, SqliteStore, Store


class StoreFactory:
    """Opens stores of one kind; for sqlite every store it opens uses the same file (for redis the same
    server and prefix), so a second `open()` after closing the first reads what the first wrote."""

    def __init__(self, kind: str, path: Path, *, redis_url: str = "") -> None:
        self.kind = kind
        self.path = path
        self.redis_url = redis_url
        self.opened: list[Store] = []

    def __call__(self) -> Store:
        store: Store
        if self.kind == "memory":
            store = MemoryStore()
        elif self.kind == "redis":
            store = RedisStore.from_url(self.redis_url)
        else:
            store = SqliteStore.open(self.path)
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in reversed(self.opened):
            await store.aclose()


async def _stores_of_the_param(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    # Only redis tests start (or reuse) the session's redis-server.
    redis_url: str = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    factory = StoreFactory(request.param, tmp_path / "dagrun.db", redis_url=redis_url)
    try:
        yield factory
    finally:
        await factory.close_all()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    async for factory in _stores_of_the_param(request, tmp_path):
        yield factory


@pytest.fixture(params=["sqlite", "redis"])
async def clients(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Separate clients of one persistent store, as other processes would be (memory has no other way in)."""
    async for factory in _stores_of_the_param(request, tmp_path):
        yield factory


@pytest.fixture
async def redis_store(redis_url: str, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Redis stores on the session's server, all under this test's prefix."""
    factory = StoreFactory("redis", tmp_path / "dagrun.db", redis_url=redis_url)
    try:
        yield factory
    finally:
        await factory.close_all()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory("sqlite", tmp_path / "dagrun.db")
    try:
        yield factory
    finally:
        await factory.close_all()


def make_run(
    run_id: str = "r1",
    *,
    flow_name: str = "etl",
    created_at: float | None = None,
    status: RunStatus = RunStatus.PENDING,
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        flow_name=flow_name,
        status=status,
        flow={"name": flow_name, "steps": [{"id": "a", "script": "outputs['x'] = 1"}]},
        inputs={"region": "eu"},
        created_at=time.time() if created_at is None else created_at,
    )


async def create(
    store: Store,
    run_id: str = "r1",
    steps: Sequence[str] = ("a", "b", "c"),
    *,
    flow_name: str = "etl",
    created_at: float | None = None,
) -> None:
    await store.create_run(make_run(run_id, flow_name=flow_name, created_at=created_at), steps)
