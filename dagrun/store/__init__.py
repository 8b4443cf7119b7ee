"""Stores: where runs, step states, the shared context and the event log live (see `base.Store`).

`open_store(url)` picks the implementation from the URL scheme: ``memory://`` for tests, ``sqlite:///path``
or a plain filesystem path for the embedded default, ``redis://`` or ``rediss://`` (TLS) for runs shared
by many machines.
"""

from __future__ import annotations

from collections.abc import Callable

from dagrun.errors import StoreError, redact
from dagrun.store.base import Event, RunRecord, StepRecord, Store
from dagrun.store.memory import MemoryStore
from dagrun.store.redis import RedisStore
from dagrun.store.sqlite import SqliteStore

__all__ = ["Event", "MemoryStore", "RedisStore", "RunRecord", "SqliteStore", "StepRecord", "Store", "open_store"]


def _open_memory(url: str) -> Store:
    return MemoryStore()


# URL scheme -> opener; a new store kind registers here.
_OPENERS: dict[str, Callable[[str], Store]] = {
    "memory": _open_memory,
    "sqlite": SqliteStore.from_url,
    "redis": RedisStore.from_url,
    "rediss": RedisStore.from_url,
}


def open_store(url: str) -> Store:
    """The store a URL names: ``memory://``, ``sqlite:///abs/path/dagrun.db``, a directory or ``.db`` path
    (a directory holds ``dagrun.db``), or ``redis[s]://[[user]:password@]host[:port][/db][?prefix=p]``.
    StoreError for an unknown scheme or a path that cannot be used.
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        return SqliteStore.open(url)
    opener = _OPENERS.get(scheme.lower())
    if opener is None:
        supported = ", ".join(f"{name}://" for name in _OPENERS)
        raise StoreError(f"{redact(url)!r}: unsupported store URL scheme {scheme!r}; supported: {supported}, or a path")
    return opener(url)
