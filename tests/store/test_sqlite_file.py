"""The SQLite store's files are private: directories it makes are 0700, its files 0600, and a store that
other users can read or write is opened with a warning that says the chmod to run, and left as it is."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from dagrun.store import SqliteStore
from tests.store.conftest import create


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_new_store_is_private_to_its_owner(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteStore.open(tmp_path / "state" / "runs")
    try:
        await create(store, "r1", ["a"])
        await store.flush()
        files = [store.path, Path(f"{store.path}-wal"), Path(f"{store.path}-shm")]
        modes = {path.name: mode_of(path) for path in [tmp_path / "state", tmp_path / "state" / "runs", *files]}
    finally:
        await store.aclose()

    assert modes == {"state": 0o700, "runs": 0o700, "dagrun.db": 0o600, "dagrun.db-wal": 0o600, "dagrun.db-shm": 0o600}
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


async def test_a_store_others_can_read_is_opened_with_a_warning_naming_the_chmod(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "my runs" / "dagrun.db"
    await SqliteStore.open(path).aclose()
    path.chmod(0o644)

    for read_only in (False, True):
        caplog.clear()
        await SqliteStore.open(path, read_only=read_only).aclose()

        warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
        assert warnings == [f"{path}: other users can read or write the store's files; run: chmod 600 '{path}'"]
    assert mode_of(path) == 0o644
