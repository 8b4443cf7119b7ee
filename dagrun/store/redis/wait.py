"""Blocking reads of the Redis store: one XREAD BLOCK serves every `wait_events` and `wait_notices` at once.

A blocked connection serves no one else, so a connection per wait made 500 event streams queue for a pool's
connections, with the orchestrator's notice wait behind them. Instead one reader task blocks on every stream
waited on (each from the lowest id its waiters have seen) and on the store's wake stream, and hands each
waiter the entries after its own id. A wait that the read in flight does not cover appends to the wake
stream, which ends that read, so the next one covers it. Invariant: no wait is missed whichever of the two
Redis sees first, because every read names the last wake entry the reader has seen, so an append it has not
seen ends the read at once; hence at most one append is in flight. The reader runs while anyone waits; a
broken connection (a Redis restart) is retried with backoff, and a read that keeps failing fails its waits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dagrun.cancellation import cancel_and_wait
from dagrun.redis_timing import blocking_read_s
from dagrun.store.redis.writer import reconnecting_retry

logger = logging.getLogger(__name__)

BLOCK_S = 10.0  # one read's longest block (shorter within a short socket timeout); waits keep their own deadlines
WAIT_GRACE_S = 5.0  # how late a blocking read may be answered before its connection counts as broken
WAKE_TTL_S = 3600  # the wake stream outlives its store by this much at most

Entry = tuple[str, dict[str, str]]  # a stream entry as redis-py reads it: (id, fields)
StreamId = tuple[int, int]


@dataclass(slots=True, eq=False)
class _Wait:
    after_id: str
    after: StreamId  # after_id, parsed
    found: asyncio.Future[list[Entry]]


class StreamWaiter:
    def __init__(self, client: Redis, *, wake_key: str) -> None:
        """`client` (with its pool) is this waiter's own, closed by `aclose`: it appends to the wake stream,
        and the reads go over a connection of its pool's kind (credentials, TLS) that is theirs alone.
        `wake_key` names the store's wake stream, which no other store uses."""
        self._client = client
        pool = client.connection_pool
        self._connection: AbstractConnection = pool.connection_class(**pool.connection_kwargs)
        self._block_s = blocking_read_s(pool.connection_kwargs, longest_s=BLOCK_S)
        self._block_ms = str(max(round(self._block_s * 1000), 1))
        self._wake_key = wake_key
        self._wake_id = "0-0"  # the last wake entry a read returned
        self._waits: dict[str, list[_Wait]] = {}  # stream key -> its waits, in arrival order
        # stream key -> the lowest id its waits have seen: what the next read names, kept as waits come and go
        # rather than found anew for each read (a read names every stream waited on, often a thousand)
        self._lowest: dict[str, _Wait] = {}
        self._reading: dict[str, _Wait] | None = None  # what the read in flight covers, if one is
        self._reader: asyncio.Task[None] | None = None
        self._waking: asyncio.Task[None] | None = None  # the append in flight, if one is
        self._closed = False

    async def wait(self, key: str, after_id: str, timeout_s: float) -> list[Entry]:
        """The entries of stream `key` after `after_id`, waiting up to `timeout_s` for the first ones.
        Raises RedisError when Redis stays unreachable, RuntimeError when the store closed meanwhile."""
        if self._closed:
            raise RuntimeError("RedisStore is closed")
        wait = _Wait(after_id, stream_id(after_id), asyncio.get_running_loop().create_future())
        self._add(key, wait)
        try:
            self._cover(key, wait.after)
            done, _ = await asyncio.wait((wait.found,), timeout=timeout_s)
            if wait.found.cancelled():
                raise RuntimeError("RedisStore is closed")
            return wait.found.result() if done else []
        finally:
            self._drop(key, wait)
            if wait.found.done() and not wait.found.cancelled():
                wait.found.exception()  # retrieved, even when our caller was cancelled meanwhile

    def close(self) -> None:
        """End every wait now (before the store's other awaits): their callers get RuntimeError."""
        self._closed = True
        for waits in self._waits.values():
            for wait in waits:
                wait.found.cancel()
        for task in (self._reader, self._waking):
            if task is not None:
                task.cancel()

    async def aclose(self) -> None:
        self.close()
        for task in (self._reader, self._waking):
            if task is not None:  # their connections are dropped before their pool closes
                await cancel_and_wait(task)
        await self._connection.disconnect()
        await self._client.aclose()
        await self._client.connection_pool.aclose()

    def _cover(self, key: str, after: StreamId) -> None:
        """Make sure a read covers `key` from `after` on: start the reader, or end the read in flight."""
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_all(), name="dagrun-redis-wait")
            return
        if self._reading is None:
            return  # between reads: the next one covers it
        covered = self._reading.get(key)
        if covered is not None and covered.after <= after:
            return  # the read in flight returns what this wait wants
        if self._waking is None or self._waking.done():
            self._waking = asyncio.create_task(self._wake(), name="dagrun-redis-wake")

    def _add(self, key: str, wait: _Wait) -> None:
        self._waits.setdefault(key, []).append(wait)
        lowest = self._lowest.get(key)
        if lowest is None or wait.after < lowest.after:
            self._lowest[key] = wait

    def _drop(self, key: str, wait: _Wait) -> None:
        waits = self._waits.get(key)
        if waits is None or wait not in waits:
            return
        waits.remove(wait)
        if not waits:
            del self._waits[key], self._lowest[key]
        elif self._lowest[key] is wait:
            self._lowest[key] = min(waits, key=lambda other: other.after)

    async def _read_all(self) -> None:
        """Read until nobody waits, handing out what each read returns."""
        while self._waits:
            covered = self._reading = dict(self._lowest)
            try:
                read = functools.partial(self._block, covered)
                reply = await reconnecting_retry().call_with_retry(read, _connection_dropped)
            except RedisError as exc:
                self._fail(covered, exc)
                continue
            finally:
                self._reading = None
            for key, entries in streams_of(reply):
                if key == self._wake_key:
                    self._wake_id = entries[-1][0]
                else:
                    self._hand_out(key, entries)

    async def _block(self, covered: dict[str, _Wait]) -> Any:
        """One XREAD BLOCK on the `covered` streams and the wake stream, its raw reply. A read not answered
        WAIT_GRACE_S after its block ends counts as broken (a socket timeout cannot, as it would also end
        the block); any failure or cancellation drops the connection, whose reply may still come."""
        ids = [wait.after_id for wait in covered.values()]
        # Packed by hiredis: redis-py packs in Python, 10x slower, and a read names every stream waited on.
        command = hiredis.pack_command(
            ("XREAD", "BLOCK", self._block_ms, "STREAMS", *covered, self._wake_key, *ids, self._wake_id)  # type: ignore[arg-type]
        )
        connection = self._connection
        try:
            async with asyncio.timeout(self._block_s + WAIT_GRACE_S):
                await connection.send_packed_command(command, check_health=False)
                return await connection.read_response()
        except TimeoutError as exc:  # asyncio's, not redis-py's: make it one that is retried
            await connection.disconnect(nowait=True)
            raise RedisTimeoutError(f"no answer {WAIT_GRACE_S} s after a blocking read's end") from exc
        except BaseException:
            await connection.disconnect(nowait=True)
            raise

    def _hand_out(self, key: str, entries: list[Entry]) -> None:
        """Each wait on `key` gets the entries after its own id, and leaves at once: the next read must not
        return the same entries again."""
        for wait in list(self._waits.get(key, ())):
            newer = [entry for entry in entries if stream_id(entry[0]) > wait.after]
            if newer:
                self._drop(key, wait)
                if not wait.found.done():
                    wait.found.set_result(newer)

    def _fail(self, covered: dict[str, _Wait], exc: RedisError) -> None:
        """The waits a read covered get its error; waits that came meanwhile get a read of their own."""
        for key in covered:
            for wait in list(self._waits.get(key, ())):
                self._drop(key, wait)
                if not wait.found.done():
                    wait.found.set_exception(exc)

    async def _wake(self) -> None:
        """Append to the wake stream (its one entry), which ends the read in flight."""

        async def append() -> Any:
            pipe = self._client.pipeline(transaction=False)  # built anew by each try: execute empties it
            pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
            pipe.expire(self._wake_key, WAKE_TTL_S)
            return await pipe.execute()

        try:
            await reconnecting_retry().call_with_retry(append, _connection_dropped)
        except RedisError as exc:  # the read in flight fails too, or ends by its block; either way waits go on
            logger.warning("redis wait: waking the blocking read failed: %s", exc)


def stream_id(text: str) -> StreamId:
    """A stream entry id as a pair that orders like Redis orders ids."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def streams_of(reply: Any) -> Iterator[tuple[str, list[Entry]]]:
    """(stream key, its entries) per stream of a raw XREAD reply: nothing for a timeout (None), RESP2's list of
    pairs or RESP3's map."""
    for key, entries in reply.items() if isinstance(reply, dict) else reply or ():
        yield key, [(entry_id, _pairs(fields)) for entry_id, fields in entries]


def _pairs(fields: list[str] | None) -> dict[str, str]:
    values = iter(fields or ())
    return dict(zip(values, values, strict=False))


def entries_of(reply: Any) -> list[Entry]:
    """The entries of the one stream an XREAD read; [] when it timed out or found none."""
    return reply[0][1] if reply else []


async def _connection_dropped(error: Exception) -> None:
    """Nothing to do before a retry: redis-py has dropped the connection that failed."""
