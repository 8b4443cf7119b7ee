"""Stores: where runs, step states, the shared context and the event log live (see `base.Store`).

`open_store(url)` picks the implementation from the URL scheme: ``memory://`` for tests, ``sqlite:///path``
or a plain filesystem path for the embedded default, ``redis://`` or ``rediss://`` (TLS) for runs shared
by many machines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from dagrun.errors import StoreUrlError, redact
from dagrun.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from dagrun.store.base import Event as Event
    from dagrun.store.base import RunRecord as RunRecord
    from dagrun.store.base import StepRecord as StepRecord
    from dagrun.store.base import Store as Store
    from dagrun.store.memory import MemoryStore as MemoryStore
    from dagrun.store.redis.store import RedisStore as RedisStore
    from dagrun.store.sqlite.store import SqliteStore as SqliteStore

__all__ = [
    "DEFAULT_STORE",
    "Event",
    "MemoryStore",
    "RedisStore",
    "RunRecord",
    "SqliteStore",
    "StepRecord",
    "Store",
    "open_store",
]

# Where the command line and `run_flow` keep runs unless told otherwise: a directory holding dagrun.db.
DEFAULT_STORE = ".dagrun"

# Each kind loads when it is opened: a SQLite user never loads redis-py; naming the default store loads none.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Event": "dagrun.store.base",
        "RunRecord": "dagrun.store.base",
        "StepRecord": "dagrun.store.base",
        "Store": "dagrun.store.base",
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
