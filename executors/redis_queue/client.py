"""The caller side of the Redis transport: RedisExecutor queues each StepRequest on its context's stream
and waits for the result on its own reply stream.

Invariant: `_waiting` maps the request id of every call still waiting to that call; the first result
for an id resolves it and any other (a re-run after a claim, a re-submission after a Redis restart)
is dropped. One writer task sends queued entries (their XADDs in one write), one reader task reads
the reply stream with XREAD BLOCK COUNT (each over a connection of its own), and a monitor (`waiting`) fails
the calls of a context that has had no live worker for `queue_timeout_s`. Once connected, the executor
outlives Redis restarts: it retries with backoff and re-submits the requests whose entries Redis lost.
A call that is cancelled (or fails) withdraws its request: the writer deletes the entry and sends a
cancel notice in the same write, so a worker that already took it stops the step (`cancellation`). A
call its caller takes back (a pause) leaves the queue only if no worker took it (`taking_back`); a worker
says when it started a step (a started notice on the reply stream, `replies.STARTED`).
Requests and notices go out signed with the shared token; a result not signed with it is refused and
the call goes on waiting (`signing`), and a call whose entry is gone without a reply (a worker refused
it) fails.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import secrets
import socket
import time
from typing import Any

from dagrun.cancellation import cancel_and_wait
from dagrun.contract.dispatch import Dispatch, Withdrawn
from dagrun.contract.envelope import decode_result, encode_request
from dagrun.contract.executor import ErrorKind, ExecutorOptions, StepRequest, StepResult
from dagrun.errors import ExecutorError, redact
from executors.redis_queue.cancellation import withdraw_commands
from executors.redis_queue.connection import (
    CLEANUP_ERRORS,
    CONNECTION_ERRORS,
    Argument,
    Backoff,
    DedicatedConnection,
    QueueSettings,
    block_ms,
    check_connection,
    let_others_run,
    open_redis,
    stream_entries,
)
from executors.redis_queue.replies import STARTED
from executors.redis_queue.signing import Signer
from executors.redis_queue.taking_back import take_back
from executors.redis_queue.waiting import Call, fail_unserved_calls

logger = logging.getLogger(__name__)

READ_COUNT = 1000  # replies taken per XREAD
REPLY_TTL_S = 600  # an abandoned reply stream (its caller died) expires after this
MAINTAIN_EVERY_S = 1.0  # how often the reader trims what it has read and refreshes the TTL
CLOSE_TIMEOUT_S = 2.0  # aclose gives up cleaning Redis after this
UNANSWERED_CHECK_S = 5.0  # how often (at most) calls are checked for entries deleted with no reply
MARKER_FIELD = b"."  # the reply stream's creation entry; never a request id
DEFAULT_CONTEXT = "default"  # where steps without a context_id go


class RedisExecutor:
    """Runs steps on the workers that serve their context: `await executor.call(request)`.

    Nothing connects until the first call; that call raises ExecutorError when Redis is unreachable.
    ExecutorError at once when `options` has no token (see `signing`)."""

    def __init__(self, settings: QueueSettings, options: ExecutorOptions) -> None:
        self.settings = settings
        self._signer = Signer.from_token(options.token, who=f"the redis executor for {settings.where}")
        self._keys = settings.keys
        self.caller_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.reply_stream = self._keys.replies(self.caller_id)
        self._reply = self.reply_stream.encode()
        self._client = open_redis(settings)
        self._requests = DedicatedConnection(self._client)  # the writer's XADDs
        self._replies = DedicatedConnection(self._client)  # the reader's XREADs
        self._block_ms = block_ms(self._client)  # an idle reader wakes this often and keeps its stream's TTL fresh
        self._numbers = itertools.count(1)
        self._waiting: dict[bytes, Call] = {}
        self._unsent: list[Call] = []
        self._withdrawn: list[tuple[str, bytes]] = []  # (context id, entry id) of requests given up on, not sent
        self._send_due = asyncio.Event()
        self._last_reply_id = b"0-0"
        self._read_since_trim = 0
        self._maintain_at = 0.0
        self._check_at = 0.0  # when `_fail_unanswered` looks next
        self._opening: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._taking_back: set[asyncio.Task[None]] = set()
        self._failure: ExecutorError | None = None  # set when a task crashed: the executor is unusable
        self._is_closed = False

    async def __aenter__(self) -> RedisExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def call(self, request: StepRequest, dispatch: Dispatch | None = None) -> StepResult:
        """The step's result; WorkerUnavailable when no live worker serves its context for
        `queue_timeout_s`, ExecutorError when Redis stays unreachable. The worker enforces the timeout.
        `dispatch` is told when a worker has run the step a while (`StartedNotice`), and may take it back
        until a worker reads it (Withdrawn)."""
        if self._is_closed:
            raise RuntimeError("RedisExecutor is closed")
        await self._open()
        number = next(self._numbers)
        request_id = f"{request.run_id}/{request.step_id}#{request.attempt}/{number}".encode()
        context_id = request.context_id or DEFAULT_CONTEXT
        stream = self._keys.requests(context_id)
        fields = self._signer.request_fields(stream, request_id, self._reply, encode_request(request))
        future = asyncio.get_running_loop().create_future()
        call = Call(request, request_id, context_id, stream, fields, future, time.monotonic(), dispatch)
        self._waiting[request_id] = call
        self._queue(call)
        if dispatch is not None:
            dispatch.offer_withdrawal(functools.partial(self._take_back, call))
        try:
            return await call.future
        except Withdrawn:
            raise  # its entry is gone, unread
        except BaseException:
            self._withdraw(call)  # cancelled or given up: no worker takes it now, and one that did stops it
            raise
        finally:
            del self._waiting[request_id]
            if dispatch is not None:
                dispatch.offer_withdrawal(None)

    async def aclose(self) -> None:
        """Stop the tasks, fail calls still waiting, delete the reply stream; safe twice."""
        if self._is_closed:
            return
        self._is_closed = True
        await cancel_and_wait(*self._tasks, *self._taking_back, *([self._opening] if self._opening else []))
        withdrawn = [*self._withdrawn, *((c.context_id, c.entry_id) for c in self._waiting.values() if c.entry_id)]
        self._fail_waiting(ExecutorError("the redis executor was closed while the step waited"))
        if self._tasks:
            await self._clean_up(withdrawn)
        await self._requests.aclose()
        await self._replies.aclose()
        await self._client.aclose()

    # --- opening ---

    async def _open(self) -> None:
        """Create the reply stream and start the tasks once; concurrent first calls share the attempt."""
        if self._failure is not None:
            raise self._failure
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._create_reply_stream(first=True))
        opening = self._opening
        if not opening.done():
            await asyncio.shield(opening)
        if opening.exception() is not None:
            if self._opening is opening:
                self._opening = None  # the next call tries again
            opening.result()
        if not self._tasks:
            for loop in (self._write_loop, self._read_loop, self._monitor_loop):
                task = asyncio.create_task(loop(), name=f"redis caller {self.caller_id} {loop.__name__}")
                task.add_done_callback(self._task_ended)
                self._tasks.append(task)
            logger.info(
                "redis caller %s connected to %s, replies on %s", self.caller_id, self.settings.where, self.reply_stream
            )

    async def _create_reply_stream(self, *, first: bool = False) -> None:
        """Make the reply stream exist (workers reply with NOMKSTREAM, so a dead caller's stream stays gone)."""
        if first:
            await check_connection(self._client, self.settings)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.reply_stream, {MARKER_FIELD: self.caller_id.encode()})
            pipe.expire(self.reply_stream, REPLY_TTL_S)
            marker_id, _ = await pipe.execute()
        if first:
            self._last_reply_id = marker_id

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        logger.error("redis caller %s: %s crashed", self.caller_id, task.get_name(), exc_info=task.exception())
        self._failure = ExecutorError(f"the redis executor failed: {task.exception()!r}")
        self._fail_waiting(self._failure)

    def _fail_waiting(self, error: ExecutorError) -> None:
        for call in self._waiting.values():
            if not call.future.done():
                call.future.set_exception(error)

    # --- writing ---

    def _queue(self, call: Call) -> None:
        self._unsent.append(call)
        self._send_due.set()

    def _withdraw(self, call: Call) -> None:
        """Delete the call's entry and send a cancel notice, in case a worker took it (see `cancellation`)."""
        if call.entry_id is not None:
            self._withdrawn.append((call.context_id, call.entry_id))
            self._send_due.set()

    def _take_back(self, call: Call) -> None:
        """Withdraw the call's request unless a worker has read it: at once while it is unsent, once
        written if its XADD is on the way."""
        if call.future.done():
            return
        call.is_wanted_back = True
        if call.entry_id is None and call in self._unsent:
            self._unsent.remove(call)
            call.future.set_exception(Withdrawn())
        elif call.entry_id is not None:
            task = asyncio.create_task(take_back(self._client, call, caller_id=self.caller_id))
            self._taking_back.add(task)
            task.add_done_callback(self._taking_back.discard)

    async def _write_loop(self) -> None:
        backoff = Backoff()
        while True:
            await self._send_due.wait()
            self._send_due.clear()
            calls = [call for call in self._unsent if call.request_id in self._waiting]
            withdrawn, self._unsent, self._withdrawn = self._withdrawn, [], []
            if calls or withdrawn:
                await self._write(calls, withdrawn, backoff)

    async def _write(self, calls: list[Call], withdrawn: list[tuple[str, bytes]], backoff: Backoff) -> None:
        """The XADDs (and the withdrawals of entries given up on) in one write, retried until `reconnect_timeout_s`."""
        deadline = time.monotonic() + self.settings.reconnect_timeout_s
        commands: list[tuple[Argument, ...]] = [("XADD", call.stream, "*", *call.fields) for call in calls]
        commands += withdraw_commands(self._keys, self._signer, withdrawn)
        while True:
            try:
                entry_ids = await self._requests.execute_many(commands)  # per call: its entry id or the refusal
                break
            except CONNECTION_ERRORS as exc:
                if time.monotonic() > deadline:
                    self._fail(calls, f"cannot reach redis at {self.settings.where}: {redact(str(exc))}")
                    return
                if not backoff.failures:
                    logger.warning("redis caller %s: cannot send (%s); retrying", self.caller_id, redact(str(exc)))
                await backoff.wait()
        backoff.reset()
        for call, entry_id in zip(calls, entry_ids, strict=False):
            if isinstance(entry_id, Exception):  # e.g. OOM: Redis is full
                self._fail([call], f"redis at {self.settings.where} refused the request: {entry_id}")
            else:
                call.entry_id = entry_id
                if call.request_id not in self._waiting:
                    self._withdraw(call)  # it gave up while its XADD was on the way
                elif call.is_wanted_back:
                    self._take_back(call)  # taken back while its XADD was on the way

    def _fail(self, calls: list[Call], message: str) -> None:
        for call in calls:
            if not call.future.done():
                call.future.set_exception(ExecutorError(message))

    # --- reading ---

    async def _read_loop(self) -> None:
        backoff = Backoff()
        while True:
            try:
                if backoff.failures:
                    await self._recover()
                    logger.warning("redis caller %s: reconnected to %s", self.caller_id, self.settings.where)
                    backoff.reset()
                if time.monotonic() >= self._check_at:
                    await self._fail_unanswered()
                if self._deliver(await self._read()):
                    # Let the callers just answered go on (and send their next requests) before the read
                    # is sent again: sending it first would put its CPU between a reply and the next step.
                    await let_others_run()
            except CONNECTION_ERRORS as exc:
                if not backoff.failures:
                    logger.warning("redis caller %s: lost redis (%s); reconnecting", self.caller_id, redact(str(exc)))
                await backoff.wait()

    async def _read(self, *, block: bool = True) -> Any:
        if time.monotonic() >= self._maintain_at or self._read_since_trim >= READ_COUNT:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xtrim(self.reply_stream, minid=self._last_reply_id, approximate=False)
                pipe.expire(self.reply_stream, REPLY_TTL_S)
                await pipe.execute()
            self._maintain_at = time.monotonic() + MAINTAIN_EVERY_S
            self._read_since_trim = 0
        block_args = ("BLOCK", self._block_ms) if block else ()
        streams = ("STREAMS", self.reply_stream, self._last_reply_id)
        return await self._replies.execute("XREAD", "COUNT", READ_COUNT, *block_args, *streams)

    def _deliver(self, response: Any) -> int:
        """Resolve the calls that these reply entries ({request id: result, ...}) answer; the number of entries."""
        count = 0
        for _, entries in stream_entries(response):
            for entry_id, fields in entries:
                for request_id, data in fields.items():
                    self._resolve(entry_id, request_id, data)
            self._last_reply_id = entries[-1][0]
            count += len(entries)
        self._read_since_trim += count
        return count

    def _resolve(self, entry_id: bytes, request_id: bytes, data: bytes) -> None:
        call = self._waiting.get(request_id)
        if call is None or call.future.done():
            if request_id != MARKER_FIELD:
                logger.debug("redis caller %s: dropping a late or duplicate result for %s", self.caller_id, request_id)
            return
        envelope = self._signer.open_result(self._reply, request_id, data)
        if envelope == STARTED:
            if call.dispatch is not None:
                call.dispatch.started()
            return
        if envelope is None:  # forged, or replayed from another request: the call waits on for its own result
            logger.warning(
                "redis caller %s: refusing entry %s of %s: its result for %s is not signed with this caller's token",
                self.caller_id,
                entry_id.decode(),
                self.reply_stream,
                request_id.decode(errors="replace"),
            )
            return
        try:
            result = decode_result(envelope)
        except ExecutorError as exc:
            result = StepResult.failure(ErrorKind.WORKER, "ExecutorError", f"a worker sent a bad result: {exc}")
        call.future.set_result(result)

    async def _recover(self) -> None:
        """After an outage: re-create the reply stream and re-submit each waiting request Redis lost."""
        await self._create_reply_stream()
        lost = await self._unanswered(self._sent(len(self._waiting)))
        if lost:
            logger.warning("redis caller %s: re-submitting %d requests redis lost", self.caller_id, len(lost))
            for call in lost:
                call.entry_id = None
                self._queue(call)

    def _sent(self, most: int) -> list[Call]:
        """The first `most` calls (the oldest) whose entries were written and whose results have not come."""
        sent = (
            call
            for call in self._waiting.values()
            if call.entry_id is not None and not call.future.done() and not call.is_wanted_back
        )
        return list(itertools.islice(sent, most))

    async def _unanswered(self, calls: list[Call]) -> list[Call]:
        """Those of `calls` whose entries Redis no longer has and whose replies have not come (a worker
        writes the reply before it deletes the entry, so the replies read after the check include those
        of every entry found gone)."""
        async with self._client.pipeline(transaction=False) as pipe:
            for call in calls:
                assert call.entry_id is not None
                pipe.xrange(call.stream, call.entry_id, call.entry_id, count=1)
            found = await pipe.execute()
        while self._deliver(await self._read(block=False)) >= READ_COUNT:
            pass
        return [call for call, entries in zip(calls, found, strict=True) if not entries and not call.future.done()]

    async def _fail_unanswered(self) -> None:
        """Fail the calls whose entries are gone with no reply: a worker refused them (their signature did
        not match its token) or something else deleted them. Looked for among the oldest READ_COUNT calls
        every `check_s`, in those sent at least `check_s` before."""
        check_s = min(UNANSWERED_CHECK_S, self.settings.queue_timeout_s)
        now = time.monotonic()
        self._check_at = now + check_s
        calls = [call for call in self._sent(READ_COUNT) if now - call.submitted_at >= check_s]
        for call in await self._unanswered(calls) if calls else ():
            request, entry_id = call.request, (call.entry_id or b"").decode()
            message = (
                f"run {request.run_id} step {request.step_id!r} attempt {request.attempt}: its request (entry "
                f"{entry_id} of {call.stream}) was deleted with no reply: a worker refused it (does its --token-file "
                "hold this caller's token? its log says) or something else deleted it"
            )
            call.future.set_exception(ExecutorError(message))

    async def _monitor_loop(self) -> None:
        await fail_unserved_calls(self._client, self.settings, self._waiting)

    async def _clean_up(self, withdrawn: list[tuple[str, bytes]]) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.delete(self.reply_stream)
                    for command in withdraw_commands(self._keys, self._signer, withdrawn):
                        pipe.execute_command(*command)
                    await pipe.execute()
        except CLEANUP_ERRORS as exc:
            logger.warning("redis caller %s: could not clean up on close: %s", self.caller_id, redact(str(exc)))
