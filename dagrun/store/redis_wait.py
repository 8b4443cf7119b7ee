"""Blocking reads of the Redis store: XREAD BLOCK on one stream, for `wait_events` and `wait_notices`.

Each wait holds a connection for its whole block, so waits use a client of their own (the writer and
the plain reads never queue behind them). A wait runs as a task that `close` cancels at once; a
cancelled wait makes redis-py drop its connection rather than reuse one with a reply pending. A broken
connection (a Redis restart) is retried with backoff, blocking only for the time left.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from dagrun.store.redis_writer import reconnecting_retry

WAIT_GRACE_S = 5.0  # how late a blocking read may be answered before its connection counts as broken

Entry = tuple[str, dict[str, str]]  # a stream entry as redis-py reads it: (id, fields)


class StreamWaiter:
    def __init__(self, client: Redis) -> None:
        """`client` (with its pool) is this waiter's own, closed by `aclose`."""
        self._client = client
        self._waits: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def wait(self, key: str, after_id: str, timeout_s: float) -> list[Entry]:
        """The entries of stream `key` after `after_id`, waiting up to `timeout_s` for the first ones.
        Raises RedisError when Redis stays unreachable, RuntimeError when the store closed meanwhile."""
        if self._closed:
            raise RuntimeError("RedisStore is closed")
        wait = asyncio.create_task(self._block(key, after_id, timeout_s), name=f"dagrun-redis-wait {key}")
        self._waits.add(wait)
        try:
            return entries_of(await wait)
        except asyncio.CancelledError:
            if self._closed and not _is_cancelling():
                raise RuntimeError("RedisStore is closed") from None
            raise
        finally:
            self._waits.discard(wait)

    def close(self) -> None:
        """End every wait now (before the store's other awaits): their callers get RuntimeError."""
        self._closed = True
        for wait in self._waits:
            wait.cancel()

    async def aclose(self) -> None:
        self.close()
        if self._waits:  # their connections are dropped before their pool closes
            await asyncio.wait(self._waits)
        await self._client.aclose()
        await self._client.connection_pool.aclose()

    async def _block(self, key: str, after_id: str, timeout_s: float) -> Any:
        """XREAD BLOCK until the deadline; a read not answered WAIT_GRACE_S after its block ends counts as
        broken (a socket timeout cannot, as blocks differ in length)."""
        deadline = time.monotonic() + timeout_s

        async def read() -> Any:
            block_s = max(deadline - time.monotonic(), 0.001)
            try:
                async with asyncio.timeout(block_s + WAIT_GRACE_S):
                    return await self._client.xread({key: after_id}, block=math.ceil(block_s * 1000))
            except TimeoutError as exc:  # asyncio's, not redis-py's: make it one that is retried
                raise RedisTimeoutError(f"no answer {WAIT_GRACE_S} s after a blocking read's end") from exc

        return await reconnecting_retry().call_with_retry(read, _connection_dropped)


def entries_of(reply: Any) -> list[Entry]:
    """The entries of the one stream an XREAD read; [] when it timed out or found none."""
    return reply[0][1] if reply else []


def _is_cancelling() -> bool:
    """Whether the current task is being cancelled (rather than a task it awaits)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _connection_dropped(error: Exception) -> None:
    """Nothing to do before a retry: redis-py has dropped the connection that failed."""
