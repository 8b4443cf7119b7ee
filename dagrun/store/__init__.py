"""Stores: where runs, step states, the shared context and the event log live (see `base.Store`).

`open_store(url)` picks the implementation from the URL scheme: ``memory://`` for tests, ``sqlite:///path``
or a plain filesystem path for the embedded default, ``redis://`` or ``rediss://`` (TLS) for runs shared
by many machines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from dagrun.errors import StoreUrlError, redact
from dagrun.lazy_exports import lazy_exports
from dagrun.store.base import Event, RunRecord, StepRecord, Store

if TYPE_CHECKING:
    from dagrun.store.memory import MemoryStore as MemoryStore
    from dagrun.store.redis.store import RedisStore as RedisStore
    from dagrun.store.sqlite.store import SqliteStore as SqliteStore

__all__ = ["Event", "MemoryStore", "RedisStore", "RunRecord", "SqliteStore", "StepRecord", "Store", "open_store"]

# Each kind loads when it is opened: a SQLite user never loads redis-py.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "MemoryStore": "dagrun.store.memory",
        "RedisStore": "dagrun.store.redis.store",
        "SqliteStore": "dagrun.store.sqlite.store",
    },
)


def _open_memory(url: str, *, read_only: bool) -> Store:
    from dagrun.store.memory import MemoryStore

    return MemoryStore()


def _open_sqlite(url: str, *, read_only: bool) -> Store:
    from dagrun.store.sqlite.store import SqliteStore

    return SqliteStore.from_url(url, read_only=read_only)


def _open_redis(url: str, *, read_only: bool) -> Store:
    from dagrun.store.redis.store import RedisStore

    return RedisStore.from_url(url)  # reading creates no store there (it may add the run ids' set to runs)


class _Opener(Protocol):
    def __call__(self, url: str, *, read_only: bool) -> Store: ...


# URL scheme -> opener; a new store kind registers here.
_OPENERS: dict[str, _Opener] = {
    "memory": _open_memory,
    "sqlite": _open_sqlite,
    "redis": _open_redis,
    "rediss": _open_redis,
}


def open_store(url: str, *, read_only: bool = False) -> Store:
    """The store a URL names: ``memory://``, ``sqlite:///abs/path/dagrun.db``, a directory or ``.db`` path
    (a directory holds ``dagrun.db``), or ``redis[s]://[[user]:password@]host[:port][/db][?prefix=p]``.
    StoreError for an unknown scheme or a path that cannot be used. With `read_only`, the store is only
    to be read: a SQLite store is then opened without creating anything (StoreNotFound when there is
    none) and works where nothing can be written.
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        from dagrun.store.sqlite.store import SqliteStore

        return SqliteStore.open(url, read_only=read_only)
    opener = _OPENERS.get(scheme.lower())
    if opener is None:
        supported = ", ".join(f"{name}://" for name in _OPENERS)
        raise StoreUrlError(
            f"{redact(url)!r}: unsupported store URL scheme {scheme!r}; supported: {supported}, or a path"
        )
    return opener(url, read_only=read_only)
