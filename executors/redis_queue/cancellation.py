"""Cancel notices: how a caller that gave up on a request gets the worker running it to stop the step.

Withdrawing a request (its call was cancelled, or failed while queued) deletes its entry (XDEL) and, in
the same write, appends ``{entry: entry id}`` to its context's cancel stream (`Keys.cancels`, capped at
about MAX_NOTICES entries). Each worker reads the cancel streams of its contexts with a blocking XREAD
on a connection of its own (one task per worker, not per step), from where they ended when it started;
the worker that holds the entry cancels its step, which kills the sandbox process running it. Only
withdrawn requests cost a notice: a step that runs to its end sends no command for this.

Best effort: a worker that misses a notice (Redis restarted and lost it, or it was trimmed away while the
worker could not read) runs the step to its end, and the caller drops the late result as it always has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import redis.asyncio as aioredis
import redis.exceptions

from dagrun.errors import redact
from executors.redis_queue.connection import (
    CONNECTION_ERRORS,
    Argument,
    Backoff,
    DedicatedConnection,
    Keys,
    block_ms,
    stream_entries,
)

logger = logging.getLogger(__name__)

MAX_NOTICES = 1000  # a cancel stream is trimmed to about this many notices (MAXLEN ~)
READ_COUNT = 1000  # notices taken per XREAD
ENTRY_FIELD = b"entry"  # a notice's one field: the withdrawn entry's id in its context's request stream
READ_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, redis.exceptions.ResponseError)


def withdraw_commands(keys: Keys, withdrawn: Iterable[tuple[str, bytes]]) -> list[tuple[Argument, ...]]:
    """The commands that withdraw requests, given as (context id, entry id): per request, XDEL of its
    entry (no worker will take it) and then its cancel notice (the worker that took it stops it)."""
    commands: list[tuple[Argument, ...]] = []
    for context_id, entry_id in withdrawn:
        commands.append(("XDEL", keys.requests(context_id), entry_id))
        commands.append(("XADD", keys.cancels(context_id), "MAXLEN", "~", MAX_NOTICES, "*", ENTRY_FIELD, entry_id))
    return commands


class CancelReader:
    """A worker's reader of the cancel notices of its contexts: `await reader.start()` where the streams
    end now, then `await reader.serve(on_cancel)` calls `on_cancel(request stream, entry id)` per notice."""

    def __init__(self, client: aioredis.Redis, keys: Keys, contexts: Iterable[str], *, worker_id: str) -> None:
        self._client = client
        self._requests = {keys.cancels(context_id): keys.requests(context_id) for context_id in contexts}
        self._last_ids = dict.fromkeys(self._requests, b"0-0")  # per cancel stream, in the same order
        self._connection = DedicatedConnection(client)
        self._block_ms = block_ms(client)
        self._worker_id = worker_id

    async def start(self) -> None:
        """Read from where the cancel streams end now (all of a stream that does not exist yet)."""
        async with self._client.pipeline(transaction=False) as pipe:
            for stream in self._requests:
                pipe.xrevrange(stream, count=1)
            last_entries = await pipe.execute()
        for stream, entries in zip(self._requests, last_entries, strict=True):
            if entries:
                self._last_ids[stream] = entries[0][0]

    async def serve(self, on_cancel: Callable[[str, bytes], None]) -> None:
        """Hand each notice to `on_cancel` until cancelled; retries with backoff while Redis fails."""
        backoff = Backoff()
        while True:
            streams: tuple[Argument, ...] = ("STREAMS", *self._requests, *self._last_ids.values())
            try:
                response = await self._connection.execute(
                    "XREAD", "COUNT", READ_COUNT, "BLOCK", self._block_ms, *streams
                )
            except READ_ERRORS as exc:
                if not backoff.failures:
                    logger.warning(
                        "worker %s: cannot read cancel notices (%s); retrying", self._worker_id, redact(str(exc))
                    )
                await backoff.wait()
                continue
            backoff.reset()
            for stream, entries in stream_entries(response):
                name = stream.decode()
                for _, fields in entries:
                    entry_id = fields.get(ENTRY_FIELD)
                    if entry_id:
                        on_cancel(self._requests[name], entry_id)
                self._last_ids[name] = entries[-1][0]

    async def aclose(self) -> None:
        """Disconnect its connection; safe twice."""
        await self._connection.aclose()
