"""The Redis store's writer: one task sends the queued writes in batches, one script call per batch.

Calls append their ops to the open batch, grouped by run, already encoded as the command's arguments
(RESP), with no I/O and no await. The writer task sends a batch whenever the previous one has been
answered, so batches grow with the load and a lone write goes out at once. Batches are applied in the
order they were queued, each atomically (`WRITE_BATCH`); a batch resent after a lost reply is recognised by
its number and not applied twice, which is what makes retrying a broken connection safe. Context
compare-and-sets ride in the same batches and answer through futures. A batch that still cannot be
written is kept as the writer's failure and turned into a StoreError for every later call: writes are
never lost silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import NoScriptError

from dagrun.errors import LeaseLost, RunNotFound, StoreError
from dagrun.store.redis.layout import STATUSES, WRITE_BATCH, Keys

logger = logging.getLogger(__name__)


def pack(*args: str | bytes) -> bytes:
    """Arguments as RESP bulk strings, ready to be joined into a command."""
    return b"".join(
        b"$%d\r\n%b\r\n" % (len(data), data) for data in (a.encode() if isinstance(a, str) else a for a in args)
    )


def pack_step(step_id: str, state: bytes, event: bytes) -> bytes:
    """The S op (step upsert and its event) as RESP: the hot path, hence one format and no loop."""
    step = step_id.encode()
    return b"$1\r\nS\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(step),
        step,
        len(state),
        state,
        len(event),
        event,
    )


STEP_OP_ARGS = 4  # arguments of an S op, as packed by pack_step


def reconnecting_retry() -> Retry:
    """The retries of the calls that ride out a Redis restart (the writer's batches, the store's waits):
    about 5 s of reconnecting with backoff before the error reaches the caller."""
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), 8)


class _Cas(NamedTuple):
    """A context compare-and-set waiting for its reply; the future says whether it was applied."""

    future: asyncio.Future[bool]
    token: str
    context: str


class _Group:
    """One run's ops in a batch: the lease epoch they carry (their fence), then their packed arguments in
    call order."""

    __slots__ = ("args", "fence", "parts")

    def __init__(self, fence: int) -> None:
        self.fence = fence
        self.parts: list[bytes] = [pack(str(fence))]
        self.args = 1


class _Batch:
    __slots__ = ("cas", "groups", "ops", "waiters")

    def __init__(self) -> None:
        self.groups: dict[str, _Group] = {}
        self.ops = 0
        self.cas: dict[str, list[_Cas]] = {}  # per run, in the order of its C ops
        self.waiters: list[asyncio.Future[None]] = []  # flushes waiting for this batch's reply


class Writer:
    """The batch queue and the task that sends it over a connection of its own from `pool`.
    `on_context(run_id, token, context)` is told the context a run has on the server after a batch in
    which one of its compare-and-sets failed; `on_missing(run_id)` of a run whose keys are gone;
    `on_refused(run_id, epoch)` of a run whose writes were refused (fenced: its lease is at `epoch` now)."""

    def __init__(
        self,
        pool: ConnectionPool,
        keys: Keys,
        *,
        writer_id: str,
        where: str,
        max_batch_ops: int,
        on_context: Callable[[str, str, str], None],
        on_missing: Callable[[str], None],
        on_refused: Callable[[str, int], None],
    ) -> None:
        self.failure: Exception | None = None  # the first batch that could not be written
        self.batches_sent = 0
        # The writer's own connection: it connects on first use and again after an error.
        self._conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
        self._keys = keys
        self._where = where
        self._max_batch_ops = max_batch_ops
        self._on_context = on_context
        self._on_missing = on_missing
        self._on_refused = on_refused
        self._head_keys = pack(keys.writer(writer_id), *(keys.runs_with_status(status) for status in STATUSES))
        self._head_key_count = 1 + len(STATUSES)
        self._statuses = pack(str(len(STATUSES)), *STATUSES)
        self._retry = reconnecting_retry()
        # _batches[0] is the next batch to send, _batches[-1] the one being filled; a batch being sent has
        # left the deque.
        self._batches: deque[_Batch] = deque([_Batch()])
        self._idle = True  # the task waits for ops (or was never started): the next op must wake it
        self._closing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- on the event loop, no await -----------------------------------------------------------------

    def add(self, run_id: str, packed: bytes, args: int, fence: int) -> None:
        """Queue one op of `run_id`, `args` arguments packed by `pack` or `pack_step`, fenced by the lease
        epoch `fence`; the hot path."""
        batch = self._batches[-1]
        group = batch.groups.get(run_id)
        if group is None:
            group = batch.groups[run_id] = _Group(fence)
        group.parts.append(packed)
        group.args += args
        batch.ops += 1
        if batch.ops >= self._max_batch_ops:
            self._batches.append(_Batch())
        if self._idle:
            self._start()

    def compare_and_set(self, run_id: str, expected: str, token: str, context: str, fence: int) -> asyncio.Future[bool]:
        """Queue a compare-and-set of the run's context: applied iff its token is still `expected`.
        The future says whether it was applied, or raises RunNotFound, LeaseLost or the writer's StoreError."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._batches[-1].cas.setdefault(run_id, []).append(_Cas(future, token, context))
        self.add(run_id, pack("C", expected, token, context), 4, fence)
        return future

    # --- awaited by the store ------------------------------------------------------------------------

    async def flush(self) -> None:
        """Return once every op queued before the call is written; StoreError if a batch failed."""
        if self.failure is not None:
            raise self.failure_error()
        if self._idle:  # nothing queued, nothing in flight
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batches[-1].waiters.append(waiter)
        await waiter

    async def stop(self) -> None:
        """Send what is queued, end the task and close the connection."""
        self._closing = True
        self._wake.set()
        try:
            if self._task is not None:
                await self._task
        finally:
            await self._conn.disconnect()

    def failure_error(self) -> StoreError:
        error = StoreError(
            f"{self._where}: writing to Redis failed ({self.failure}); writes since the last flush may be lost"
            " and no more are accepted: reopen the store once the cause is fixed"
        )
        error.__cause__ = self.failure
        return error

    # --- the task ------------------------------------------------------------------------------------

    def _start(self) -> None:
        self._idle = False
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"dagrun-redis-writer {self._where}")
        self._wake.set()

    async def _run(self) -> None:
        batches = self._batches
        while True:
            batch = batches[0]
            if not batch.ops and not batch.waiters:
                if self._closing:
                    return
                self._idle = True
                self._wake.clear()
                await self._wake.wait()  # set by the next op or flush after idling, or by stop()
                continue
            batches.popleft()
            if not batches:
                batches.append(_Batch())
            await self._commit(batch)

    async def _commit(self, batch: _Batch) -> None:
        if batch.ops and self.failure is None:
            try:
                self._settle_cas(batch, await self._send(batch))
            except Exception as exc:  # becomes the StoreError of every later call
                logger.error("redis store %s: writing a batch of %d ops failed: %s", self._where, batch.ops, exc)
                self.failure = exc
        error = None if self.failure is None else self.failure_error()
        if error is not None:
            for entries in batch.cas.values():
                for entry in entries:
                    if not entry.future.done():
                        entry.future.set_exception(error)
        for waiter in batch.waiters:
            if waiter.done():  # its flush was cancelled
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    async def _send(self, batch: _Batch) -> list[Any]:
        """One EVALSHA of WRITE_BATCH, packed here: the keys, then per run its argument count and ops."""
        keys = self._keys
        run_keys: list[str] = []
        arg_parts: list[bytes] = []
        for run_id, group in batch.groups.items():
            run_keys += (
                keys.run(run_id), keys.steps(run_id), keys.events(run_id), keys.step_order(run_id), keys.epoch(run_id),
                keys.logs(run_id),
            )  # fmt: skip
            arg_parts.append(pack(str(group.args)))
            arg_parts += group.parts
        key_count = self._head_key_count + len(run_keys)
        arg_count = 1 + 1 + len(STATUSES) + sum(1 + group.args for group in batch.groups.values())
        command = b"".join(
            (
                b"*%d\r\n" % (3 + key_count + arg_count),
                pack("EVALSHA", WRITE_BATCH.sha, str(key_count)),
                self._head_keys,
                pack(*run_keys),
                pack(str(self.batches_sent)),
                self._statuses,
                *arg_parts,
            )
        )
        replies: list[Any] = await self._retry.call_with_retry(
            lambda: self._round_trip(command), lambda _error: self._conn.disconnect()
        )
        self.batches_sent += 1
        return replies

    async def _round_trip(self, command: bytes) -> Any:
        conn = self._conn
        await conn.send_packed_command(command, check_health=False)
        try:
            return await conn.read_response()
        except NoScriptError:  # a new or restarted server: load the script; the batch did not run
            await conn.send_command("SCRIPT", "LOAD", WRITE_BATCH.text)
            await conn.read_response()
            await conn.send_packed_command(command, check_health=False)
            return await conn.read_response()

    def _settle_cas(self, batch: _Batch, replies: list[Any]) -> None:
        for (run_id, group), reply in zip(batch.groups.items(), replies, strict=True):
            entries = batch.cas.get(run_id, [])
            if isinstance(reply, int):  # the run's ops were not applied
                error = self._not_applied(run_id, group, reply)
                for entry in entries:
                    if not entry.future.done():  # its caller was cancelled
                        entry.future.set_exception(error)
                continue
            if not entries:
                continue
            for entry, applied in zip(entries, reply, strict=True):
                if not entry.future.done():
                    entry.future.set_result(applied == 1)
            if any(applied != 1 for applied in reply):  # another client changed the context: resync
                last = reply[-1]
                token, context = (entries[-1].token, entries[-1].context) if last == 1 else (last[0], last[1])
                self._on_context(run_id, token, context)

    def _not_applied(self, run_id: str, group: _Group, reply: int) -> StoreError:
        """Say why a run's ops were dropped: the run is gone (0), or its lease passed on (-epoch)."""
        if reply == 0:
            logger.error("redis store %s: run %s is gone from Redis; its writes were dropped", self._where, run_id)
            self._on_missing(run_id)
            return RunNotFound(run_id)
        epoch = -reply
        logger.warning(
            "redis store %s: run %s: writes refused, its lease passed to another driver (epoch %d > %d)",
            self._where, run_id, epoch, group.fence,
        )  # fmt: skip
        self._on_refused(run_id, epoch)
        return LeaseLost(run_id, epoch=epoch, held=group.fence)
