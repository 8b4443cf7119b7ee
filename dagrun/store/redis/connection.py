"""The Redis store's connections, and the one place a Redis error becomes a StoreError.

A store reaches its Redis three ways: a client for the calls answered before they return (reads, the control
scripts, creations), the stream waiter's own client for blocking reads (a blocked connection serves no one
else: see `wait`), and a pool for the writer's connection (`writer`). Invariant: every call goes
through `call`, so a Redis error reaches the caller as a StoreError naming the redacted URL, and once the
connection is closed no call touches a client: it raises RuntimeError instead.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import RedisError

from dagrun.errors import StoreError, redact
from dagrun.store.redis.layout import DEFAULT_PREFIX, Keys
from dagrun.store.redis.wait import StreamWaiter

logger = logging.getLogger(__name__)

SCHEMES = ("redis", "rediss", "unix")
MAX_CONNECTIONS = 64  # per pool; more callers wait for a free connection


class RedisConnection:
    """The clients of one store on the Redis at a URL, and the key layout under its prefix."""

    def __init__(self, url: str, *, prefix: str | None, store_id: str) -> None:
        """Clients for `url` (``redis://[[user]:password@]host[:port][/db][?prefix=p]``, ``rediss://`` for
        TLS), keys under `prefix`, else the URL's, else the default; `store_id` names the waiter's wake stream.
        Nothing connects yet; StoreError, with the URL redacted, when the URL is not a usable Redis URL."""
        self.where = redact(url)
        redis_url, url_prefix = _split_prefix(url)
        if urlsplit(redis_url).scheme.lower() not in SCHEMES:
            raise StoreError(f"{self.where!r} is not a Redis store URL; expected redis://host:6379/0 or rediss://")
        self.keys = Keys(prefix if prefix is not None else url_prefix if url_prefix is not None else DEFAULT_PREFIX)
        try:
            # Reads may be retried freely, and so may the scripts called here (a create or a command carries a
            # token, a lease script is idempotent); the writer retries itself (a resent batch is applied once).
            self._client_pool = _pool(redis_url, retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.5), 3))
            self.client = Redis(connection_pool=self._client_pool)
            # Blocking reads: retried by the waiter itself, which then reads what is waited on by then.
            waiter_client = Redis(connection_pool=_pool(redis_url, retry=Retry(NoBackoff(), 0)))
            self.waiter = StreamWaiter(waiter_client, wake_key=self.keys.wake(store_id))
            self.writer_pool = ConnectionPool.from_url(redis_url, decode_responses=True)
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{self.where!r}: not a usable Redis URL: {exc}") from exc
        self._closed = False

    async def call(self, awaitable: Any, *, doing: str) -> Any:
        """Await a Redis call, turning Redis errors into StoreErrors that name the redacted URL."""
        if self._closed:  # closed while the caller awaited a flush: the clients may be gone
            if isinstance(awaitable, Coroutine):
                awaitable.close()
            raise RuntimeError("RedisStore is closed")
        try:
            return await awaitable
        except RedisError as exc:
            raise StoreError(f"{self.where}: {doing} failed: {redact(str(exc))}") from exc

    def close(self) -> None:
        """Refuse every later call and end every wait now, before the store's other awaits."""
        self._closed = True
        self.waiter.close()  # waiting callers get RuntimeError

    async def aclose(self) -> None:
        """Close the clients and pools, once the store's writer has stopped."""
        self._closed = True
        await self.waiter.aclose()
        await self.writer_pool.aclose()
        await self.client.aclose()
        await self._client_pool.aclose()


def _pool(redis_url: str, *, retry: Retry) -> BlockingConnectionPool:
    """A pool that makes a caller wait for a free connection rather than fail: hundreds of runs (or event
    streams) may call at once. The retry policy lives on its connections."""
    return BlockingConnectionPool.from_url(
        redis_url, decode_responses=True, max_connections=MAX_CONNECTIONS, timeout=None, retry=retry
    )


def _split_prefix(url: str) -> tuple[str, str | None]:
    """The URL without its ``prefix`` query parameter (redis-py would refuse it), and that prefix."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    if not prefixes:
        return url, None
    rest = urlencode([(name, value) for name, value in query if name != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefixes[-1]
