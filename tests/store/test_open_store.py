"""open_store: the URL (or path) names the store kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagrun.errors import StoreError
from dagrun.store import MemoryStore, SqliteStore, Store, open_store


async def _opened(url: str) -> Store:
    store = open_store(url)
    await store.aclose()
    return store


async def test_memory_url_opens_a_memory_store() -> None:
    assert isinstance(await _opened("memory://"), MemoryStore)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite://{tmp}/runs.db", "runs.db"),
        ("SQLite://{tmp}/state", "state/dagrun.db"),
        ("{tmp}/runs.db", "runs.db"),
        ("{tmp}/.dagrun", ".dagrun/dagrun.db"),
        ("{tmp}/nested/dir/", "nested/dir/dagrun.db"),
        ("{tmp}", "dagrun.db"),
    ],
)
async def test_sqlite_urls_and_paths_open_a_sqlite_store(tmp_path: Path, given: str, expected: str) -> None:
    store = await _opened(given.format(tmp=tmp_path))
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / expected
    assert store.path.is_file()


def test_an_unknown_scheme_names_the_supported_ones_without_credentials() -> None:
    with pytest.raises(StoreError) as caught:
        open_store("postgres://admin:hunter2@db.example/runs")
    message = str(caught.value)
    assert "'postgres'" in message
    assert "memory://" in message and "sqlite://" in message
    assert "hunter2" not in message
