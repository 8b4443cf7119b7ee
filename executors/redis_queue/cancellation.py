"""Cancel notices: how a caller that gave up on a request gets the worker running it to stop the step.

Withdrawing a request (its call was cancelled, or failed while queued) deletes its entry (XDEL) and, in
the same write, appends ``{entry: entry id, sig: signature}`` to its context's cancel stream
(`Keys.cancels`, capped at about MAX_NOTICES entries). Each worker reads the cancel streams of its
contexts with a blocking XREAD on a connection of its own (one task per worker, not per step), from
where they ended when it started; the worker that holds the entry cancels its step, which kills the
sandbox process running it. Only withdrawn requests cost a notice: a step that runs to its end sends no
command for this. Notices are signed (`signing`) because a forged one would stop a running step: a
worker logs and ignores one not signed with its token for that stream.

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
from executors.redis_queue.signing import NOTICE, SIGNATURE_FIELD, Signer

logger = logging.getLogger(__name__)

MAX_NOTICES = 1000  # a cancel stream is trimmed to about this many notices (MAXLEN ~)
READ_COUNT = 1000  # notices taken per XREAD
ENTRY_FIELD = b"entry"  # a notice's one field: the withdrawn entry's id in its context's request stream
READ_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, redis.exceptions.ResponseError)


def withdraw_commands(keys: Keys, signer: Signer, withdrawn: Iterable[tuple[str, bytes]]) -> list[tuple[Argument, ...]]:
    """The commands that withdraw requests, given as (context id, entry id): per request, XDEL of its
    entry (no worker will take it) and then its signed cancel notice (the worker that took it stops it)."""
    commands: list[tuple[Argument, ...]] = []
    for context_id, entry_id in withdrawn:
        stream = keys.cancels(context_id)
        signature = signer.sign(NOTICE, stream.encode(), entry_id)
        commands.append(("XDEL", keys.requests(context_id), entry_id))
        commands.append(
            ("XADD", stream, "MAXLEN", "~", MAX_NOTICES, "*", ENTRY_FIELD, entry_id, SIGNATURE_FIELD, signature)
        )
    return commands


class CancelReader:
    """A worker's reader of the cancel notices of its contexts: `await reader.start()` where the streams
    end now, then `await reader.serve(on_cancel)` calls `on_cancel(request stream, entry id)` per notice."""

    def __init__(
        self, client: aioredis.Redis, keys: Keys, signer: Signer, contexts: Iterable[str], *, worker_id: str
    ) -> None:
        self._client = client
        self._signer = signer
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
                for notice_id, fields in entries:
                    self._take(name, notice_id, fields, on_cancel)
                self._last_ids[name] = entries[-1][0]

    def _take(
        self, stream: str, notice_id: bytes, fields: dict[bytes, bytes], on_cancel: Callable[[str, bytes], None]
    ) -> None:
        """Hand a notice signed for `stream` to `on_cancel`; log and ignore any other."""
        entry_id = fields.get(ENTRY_FIELD, b"")
        problem = self._signer.problem(fields.get(SIGNATURE_FIELD), NOTICE, stream.encode(), entry_id)
        if problem is None:
            on_cancel(self._requests[stream], entry_id)
        else:
            logger.warning(
                "worker %s: ignoring cancel notice %s of %s: %s", self._worker_id, notice_id.decode(), stream, problem
            )

    async def aclose(self) -> None:
        """Disconnect its connection; safe twice."""
        await self._connection.aclose()
