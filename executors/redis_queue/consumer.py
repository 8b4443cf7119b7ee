"""The worker side of the Redis transport: a Consumer feeds a ScriptWorker from its contexts' streams.

Invariant: `_held` has every entry this worker read or claimed and has not acknowledged. The heartbeat
loop keeps them fresh (XCLAIM JUSTID to itself), so a live worker never loses a step however long it
runs, and claims the pending entries of consumers without a heartbeat (dead workers) and, as a backstop,
entries idle past the visibility timeout. A batch of replies goes out in one script (one command), each
reply before the XACK+XDEL of its entry, so an entry is never gone before its reply is written
(`replies`). Steps run in the worker's sandbox pool (`concurrency` processes, so at most that many at
once); while steps are quick, up to `prefetch` more wait in the pool's queue. A cancel notice for a held
entry (`cancellation`) cancels its step, and the entry is acknowledged with no reply; one for an entry
not held is remembered a while, in case the entry is still on its way here. An entry not signed with
the worker's token (`signing`) is refused: acknowledged and deleted unrun, with no reply, and logged
without its contents. A step still running a while after its sandbox process started it tells its caller
so (`StartedNotice`; a started notice, written with the replies).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.typing import StreamIdT

from dagrun.cancellation import cancel_and_wait
from dagrun.errors import ExecutorError, redact
from dagrun.worker.script_worker import ScriptWorker
from dagrun.worker.started import StartedNotice
from executors.redis_queue.cancellation import CancelReader
from executors.redis_queue.connection import (
    CLEANUP_ERRORS,
    CONNECTION_ERRORS,
    GROUP,
    Backoff,
    DedicatedConnection,
    QueueSettings,
    block_ms,
    let_others_run,
    stream_entries,
)
from executors.redis_queue.liveness import consumers, encode_status, forget_consumer
from executors.redis_queue.replies import HeldEntry, ReplyWriter
from executors.redis_queue.signing import Signer

logger = logging.getLogger(__name__)

QUICK_STEP_S = 0.05  # steps shorter than this on average are worth reading ahead
FLUSH_TIMEOUT_S = 5.0  # on shutdown, how long replies may take to reach Redis after the grace period
EARLY_NOTICES = 1000  # cancel notices kept for entries not held (yet): a notice may overtake its entry
REFUSED_OR_LOST: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, redis.exceptions.ResponseError)
SIGN_OFF_ERRORS: tuple[type[Exception], ...] = (*CLEANUP_ERRORS, redis.exceptions.ResponseError)


class Consumer:
    """Serves `worker` from Redis until `stop`: `await Consumer(worker, client, settings).serve(stop)`.
    ExecutorError at once when the worker has no token."""

    def __init__(self, worker: ScriptWorker, client: aioredis.Redis, settings: QueueSettings) -> None:
        self._worker = worker
        self._client = client
        self._settings = settings
        self._keys = settings.keys
        self._name = worker.settings.worker_id
        self._signer = Signer.from_token(worker.settings.token, who=f"worker {self._name}")
        self._streams = [self._keys.requests(context_id) for context_id in worker.settings.contexts]
        self._concurrency = worker.settings.concurrency
        self._block_ms = block_ms(client)
        self._requests = DedicatedConnection(client)  # the read loop's XREADGROUPs
        self._replies = ReplyWriter(client, self._keys, self._signer, worker_id=self._name)
        self._held: dict[tuple[str, bytes], HeldEntry] = {}
        self._cancels = CancelReader(client, self._keys, self._signer, worker.settings.contexts, worker_id=self._name)
        self._early_notices: dict[tuple[str, bytes], None] = {}  # withdrawn entries not held, oldest first
        self._running: set[asyncio.Task[None]] = set()
        self._ended: list[HeldEntry] = []  # steps that ended, their replies not written yet
        self._starts: list[HeldEntry] = []  # steps that started, their started notices not written yet
        self._reply_due = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._is_draining = False  # no new work: no reads, no claims
        self._is_closing = False  # the reply loop ends once nothing is left to write

    @property
    def _free(self) -> int:
        """How many more entries to take: one per idle sandbox process, plus `prefetch` while steps are
        quick (so that a process never waits for a round trip to Redis, and slow steps are not hoarded)."""
        step_s = self._worker.recent_step_s
        is_quick = step_s is not None and step_s < QUICK_STEP_S
        return self._concurrency + (self._settings.prefetch if is_quick else 0) - len(self._running)

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until `stop`, then drain and sign off; ExecutorError when Redis refuses to let it start."""
        try:
            await self._create_groups()
            await self._cancels.start()
            await self._beat()
        except REFUSED_OR_LOST as exc:
            raise ExecutorError(f"redis at {self._settings.where} refused worker {self._name}: {exc}") from exc
        logger.info(
            "worker %s serving contexts %s from redis at %s (concurrency %d, prefix %r)",
            self._name,
            ", ".join(self._worker.settings.contexts),
            self._settings.where,
            self._concurrency,
            self._settings.prefix,
        )
        try:
            async with asyncio.TaskGroup() as group:
                beating = group.create_task(self._heartbeat_loop())
                replying = group.create_task(self._reply_loop())
                reading = group.create_task(self._read_loop())
                cancelling = group.create_task(self._cancels.serve(self._cancel_withdrawn))
                await stop.wait()
                self._is_draining = True
                await cancel_and_wait(reading)
                await self._drain()
                try:
                    async with asyncio.timeout(FLUSH_TIMEOUT_S):
                        await asyncio.shield(replying)
                except TimeoutError:
                    logger.warning("worker %s: could not write every reply; those steps will run again", self._name)
                await cancel_and_wait(replying, beating, cancelling)
        except* ExecutorError as group:
            raise group.exceptions[0] from None  # one message for the command line, not a group
        finally:
            await self._leave()
            await self.aclose()

    async def aclose(self) -> None:
        """Disconnect the consumer's own connections (the client stays its owner's); safe twice."""
        await self._requests.aclose()
        await self._replies.aclose()
        await self._cancels.aclose()

    # --- reading and running ---

    async def _read_loop(self) -> None:
        backoff = Backoff()
        while not (self._is_draining or self._worker.stopping):
            if self._free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                response = await self._read()
            except redis.exceptions.ResponseError as exc:
                await self._on_refusal(exc, "read")
                continue
            except CONNECTION_ERRORS as exc:
                if not backoff.failures:
                    logger.warning("worker %s: lost redis (%s); reconnecting", self._name, redact(str(exc)))
                await backoff.wait()
                continue
            if backoff.failures:
                logger.warning("worker %s: reconnected to redis at %s", self._name, self._settings.where)
                backoff.reset()
            if response:
                for stream, entries in stream_entries(response):
                    self._take(stream.decode(), entries)
                # Let the steps just taken reach their sandbox before the read is sent again: sending it
                # first would put its CPU on every step's critical path.
                await let_others_run()

    async def _read(self) -> Any:
        streams = ("STREAMS", *self._streams, *[">"] * len(self._streams))
        return await self._requests.execute(
            "XREADGROUP", "GROUP", GROUP, self._name, "COUNT", self._free, "BLOCK", self._block_ms, *streams
        )

    def _take(self, stream: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Start a step for each entry not already held (none once draining: they are handed back)."""
        for entry_id, fields in entries:
            if self._is_draining:
                return
            key = (stream, entry_id)
            if key in self._held:
                continue
            entry = self._held[key] = HeldEntry(stream, entry_id, fields or {})  # Redis 6 claims deleted ones
            if key in self._early_notices:  # its cancel notice came first
                logger.info("worker %s: entry %s of %s was withdrawn before it started", self._name, entry_id, stream)
                self._acknowledge(entry)
                continue
            problem = self._signer.request_problem(stream, entry.fields)
            if problem is not None:  # forged, or from a caller with another token: never run, never retried
                logger.warning("worker %s: refusing entry %s of %s: %s", self._name, entry_id.decode(), stream, problem)
                self._acknowledge(entry)
                continue
            entry.task = task = asyncio.create_task(self._run(entry))
            self._running.add(task)
            task.add_done_callback(functools.partial(self._step_ended, entry))

    def _step_ended(self, entry: HeldEntry, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        entry.task = None
        self._slot_freed.set()
        if entry.is_withdrawn and entry.reply is None:
            self._acknowledge(entry)

    def _cancel_withdrawn(self, stream: str, entry_id: bytes) -> None:
        """A cancel notice: stop the entry's step if it runs here (its late result would be dropped anyway)."""
        key = (stream, entry_id)
        entry = self._held.get(key)
        if entry is None:  # another worker's, never taken, already answered, or not here yet
            self._early_notices[key] = None
            if len(self._early_notices) > EARLY_NOTICES:
                del self._early_notices[next(iter(self._early_notices))]
        elif entry.task is not None and not entry.task.done() and not entry.is_withdrawn:
            logger.debug("worker %s: entry %s of %s withdrawn by its caller; cancelling", self._name, entry_id, stream)
            entry.is_withdrawn = True
            entry.task.cancel()  # `_step_ended` acknowledges it

    def _acknowledge(self, entry: HeldEntry) -> None:
        """Have the reply loop acknowledge and delete the entry of a withdrawn or refused request, with no reply."""
        entry.is_withdrawn = True
        self._ended.append(entry)
        self._reply_due.set()

    async def _run(self, entry: HeldEntry) -> None:
        data = entry.fields.get(b"req")
        if data is None or b"id" not in entry.fields:
            problem = f"entry fields {sorted(entry.fields)!r} lack 'id' or 'req'"
            entry.reply = self._worker.refuse(problem, origin=entry)
        else:
            notice = StartedNotice(functools.partial(self._announce_start, entry))
            try:
                entry.reply = await self._worker.answer(data, origin=entry, dispatch=notice.dispatch)
            finally:
                notice.cancel()
        self._ended.append(entry)
        self._reply_due.set()

    def _announce_start(self, entry: HeldEntry) -> None:
        """Have the reply loop tell the caller that the step started (`StartedNotice`)."""
        if entry.reply is None and not entry.is_withdrawn:
            self._starts.append(entry)
            self._reply_due.set()

    # --- replying ---

    async def _reply_loop(self) -> None:
        backoff = Backoff()
        while self._ended or self._starts or not self._is_closing:
            if not (self._ended or self._starts):
                self._reply_due.clear()
                await self._reply_due.wait()
                continue
            batch, self._ended = self._ended, []
            starts = [entry for entry in self._starts if entry.reply is None]  # an ended one's result says it
            self._starts = []
            while True:
                try:
                    await self._replies.write(batch, starts)
                    break
                except CONNECTION_ERRORS as exc:
                    if not backoff.failures:
                        logger.warning("worker %s: cannot reply (%s); retrying", self._name, redact(str(exc)))
                    await backoff.wait()
            backoff.reset()
            for entry in batch:
                del self._held[(entry.stream, entry.entry_id)]

    # --- liveness and claims ---

    async def _heartbeat_loop(self) -> None:
        backoff_logged = False
        while True:
            await asyncio.sleep(self._settings.heartbeat_s)  # the heartbeat: a worker's one clock-driven loop
            try:
                await self._beat()
                if not self._is_draining:
                    await self._claim()
                backoff_logged = False
            except redis.exceptions.ResponseError as exc:
                await self._on_refusal(exc, "heartbeat")
            except CONNECTION_ERRORS as exc:
                if not backoff_logged:
                    logger.warning("worker %s: heartbeat failed: %s", self._name, redact(str(exc)))
                    backoff_logged = True

    async def _beat(self) -> None:
        """Refresh the heartbeat key and the idle time of every held entry."""
        held: dict[str, list[bytes]] = {}
        for stream, entry_id in self._held:
            held.setdefault(stream, []).append(entry_id)
        ttl_ms = int(self._settings.heartbeat_ttl_s * 1000)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(self._keys.heartbeat(self._name), encode_status(self._worker.status()), px=ttl_ms)
            for stream, entry_ids in held.items():
                pipe.xclaim(stream, GROUP, self._name, 0, entry_ids, justid=True)  # type: ignore[arg-type]
            await pipe.execute()

    async def _claim(self) -> None:
        """Take over the entries of dead consumers, then those idle past the visibility timeout."""
        visibility_ms = int(self._settings.visibility_timeout_s * 1000)
        # A dead worker's entries are claimed once idle for a heartbeat; of two workers claiming at once,
        # the second then finds them fresh and leaves them.
        dead_idle_ms = int(self._settings.heartbeat_s * 1000)
        for stream in self._streams:
            for consumer in await consumers(self._client, self._keys, stream):
                if consumer.is_live or consumer.name == self._name:
                    continue
                if consumer.pending == 0:
                    await forget_consumer(self._client, self._keys, stream, consumer.name)
                elif self._free > 0:
                    pending = await self._client.xpending_range(
                        stream, GROUP, "-", "+", self._free, consumername=consumer.name
                    )
                    entry_ids: list[StreamIdT] = [item["message_id"] for item in pending]
                    claimed = await self._client.xclaim(stream, GROUP, self._name, dead_idle_ms, entry_ids)
                    self._took(stream, claimed, f"of dead worker {consumer.name}")  # type: ignore[arg-type]
            if self._free > 0:
                _, claimed, _ = await self._client.xautoclaim(
                    stream, GROUP, self._name, visibility_ms, "0-0", count=self._free
                )
                self._took(stream, claimed, f"idle for over {self._settings.visibility_timeout_s:g} s")

    def _took(self, stream: str, claimed: list[tuple[bytes, dict[bytes, bytes]]], why: str) -> None:
        fresh = [(entry_id, fields) for entry_id, fields in claimed if (stream, entry_id) not in self._held]
        if fresh:
            logger.warning("worker %s claimed %d entries of %s %s", self._name, len(fresh), stream, why)
            self._take(stream, fresh)

    # --- joining and leaving ---

    async def _on_refusal(self, exc: redis.exceptions.ResponseError, what: str) -> None:
        """A group gone (Redis lost its data) is made again; any other refusal stops the worker."""
        if "NOGROUP" not in str(exc):
            raise ExecutorError(f"redis at {self._settings.where} refused the {what} of worker {self._name}: {exc}")
        logger.warning("worker %s: a consumer group is gone (redis lost its data?); creating it", self._name)
        await self._create_groups()

    async def _create_groups(self) -> None:
        """Create each stream's group at id 0: entries queued before any worker existed are served too."""
        for stream in self._streams:
            try:
                await self._client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis.exceptions.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    where = self._settings.where
                    raise ExecutorError(f"redis at {where}: cannot create the group of {stream}: {exc}") from exc

    async def _drain(self) -> None:
        """Stop taking work; let running steps finish within the grace period; hand back the rest."""
        grace_s = self._worker.settings.grace_s
        if self._running:
            logger.info("worker %s: draining %d running steps (grace %g s)", self._name, len(self._running), grace_s)
            _, unfinished = await asyncio.wait(set(self._running), timeout=grace_s)
            await cancel_and_wait(*unfinished)
        handed_back = [key for key, entry in self._held.items() if entry.reply is None and not entry.is_withdrawn]
        for key in handed_back:
            del self._held[key]  # no longer refreshed: once the heartbeat is gone, live workers claim them
        if handed_back:
            logger.warning("worker %s: handing back %d unfinished steps", self._name, len(handed_back))
        self._is_closing = True
        self._reply_due.set()

    async def _leave(self) -> None:
        """Delete the heartbeat (others claim what is left at once) and, if it holds nothing, the consumer."""
        await cancel_and_wait(*self._running)
        try:
            async with asyncio.timeout(FLUSH_TIMEOUT_S):
                await self._client.delete(self._keys.heartbeat(self._name))
                for stream in self._streams:
                    await forget_consumer(self._client, self._keys, stream, self._name)
        except SIGN_OFF_ERRORS as exc:
            logger.warning("worker %s: could not sign off from redis: %s", self._name, redact(str(exc)))
