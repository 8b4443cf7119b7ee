"""Fixtures for the store suites: `store` opens stores of one kind and closes them all at teardown."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from dagrun.states import RunStatus
from dagrun.store import MemoryStore, RunRecord, SqliteStore, Store


class StoreFactory:
    """Opens stores of one kind; for sqlite every store it opens uses the same file, so a second
    `open()` after closing the first reads what the first wrote."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.opened: list[Store] = []

    def __call__(self) -> Store:
        store: Store = MemoryStore() if self.kind == "memory" else SqliteStore.open(self.path)
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in reversed(self.opened):
            await store.aclose()


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    factory = StoreFactory(request.param, tmp_path / "dagrun.db")
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
