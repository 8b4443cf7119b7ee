"""How a worker answers: the entries it holds, and a batch of their replies written as one script call.

Per batch, one reply entry per caller ({request id: signed result, ...}; XADD NOMKSTREAM, so a gone
caller's stream stays gone), then XACK and XDEL of the entries per request stream, all in one command, so
that an entry is never gone before its reply is written. The entry of a withdrawn request (its caller
gave up) or of a refused one (not signed with the worker's token) is acknowledged and deleted with no reply.
A batch may also say that steps started: for each, its request id with a signed empty result (`STARTED`)
in its caller's reply entry, its entry left held.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from executors.redis_queue.connection import GROUP, Argument, DedicatedConnection, Keys
from executors.redis_queue.signing import Signer

logger = logging.getLogger(__name__)

STARTED = b""  # the envelope of a started notice: a reply that is no result
REPLY_CHUNK = 1000  # entries per reply script at most (Lua's unpack takes a few thousand values)
# The replies of a batch (XADD NOMKSTREAM per caller), then XACK + XDEL of its entries per request stream,
# in one round trip. KEYS: reply streams, then request streams; ARGV: the group, the number of reply
# streams, then per reply stream its field count and fields, then per request stream its id count and ids.
# Returns the errors (an XADD refused for lack of memory, a group gone...); the rest still runs.
_REPLY = """
local group, replies, at, errors = ARGV[1], tonumber(ARGV[2]), 3, {}
local function run(...)
    local result = redis.pcall(...)
    if type(result) == 'table' and result.err then errors[#errors + 1] = result.err end
end
for i = 1, replies do
    local n = tonumber(ARGV[at]) * 2
    run('XADD', KEYS[i], 'NOMKSTREAM', '*', unpack(ARGV, at + 1, at + n))
    at = at + n + 1
end
for i = replies + 1, #KEYS do
    local n = tonumber(ARGV[at])
    run('XACK', KEYS[i], group, unpack(ARGV, at + 1, at + n))
    run('XDEL', KEYS[i], unpack(ARGV, at + 1, at + n))
    at = at + n + 1
end
return errors
"""
_REPLY_SHA = hashlib.sha1(_REPLY.encode()).hexdigest()


@dataclass(slots=True, eq=False)
class HeldEntry:
    """An entry a worker read or claimed and has not acknowledged yet."""

    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes]
    reply: bytes | None = None  # the encoded result, once the step has ended
    task: asyncio.Task[None] | None = None  # the step's, while it runs
    is_withdrawn: bool = False  # its caller gave up, or it was refused: it is acknowledged with no reply

    def __str__(self) -> str:
        return f"entry {self.entry_id.decode()} of {self.stream}"  # as log lines name it


class ReplyWriter:
    """Writes batches of ended entries over a connection of its own: `await writer.write(batch)`; each result
    is sealed with `signer` for its request id and reply stream."""

    def __init__(self, client: aioredis.Redis, keys: Keys, signer: Signer, *, worker_id: str) -> None:
        self._connection = DedicatedConnection(client)
        self._keys = keys
        self._signer = signer
        self._worker_id = worker_id

    async def write(self, batch: Sequence[HeldEntry], starts: Sequence[HeldEntry] = ()) -> None:
        """Write the replies of `batch` and acknowledge its entries, REPLY_CHUNK per command, after the
        started notices of `starts` (a worker holds fewer than REPLY_CHUNK). What Redis refuses is logged;
        a connection error is raised (the batch may then be written again: callers drop duplicates, and
        acknowledging twice is harmless)."""
        chunks = [batch[start : start + REPLY_CHUNK] for start in range(0, len(batch), REPLY_CHUNK)] or [()]
        for number, chunk in enumerate(chunks):
            keys, args = self._script_arguments(chunk, starts if number == 0 else ())
            try:
                refusals = await self._run_script(keys, args)
            except redis.exceptions.ResponseError as exc:  # the script itself refused (scripting disabled, BUSY...)
                refusals = [str(exc).encode()]
            for refusal in refusals:
                logger.warning("worker %s: a reply was refused: %s", self._worker_id, refusal.decode(errors="replace"))

    def _script_arguments(
        self, batch: Sequence[HeldEntry], starts: Sequence[HeldEntry]
    ) -> tuple[list[Argument], list[Argument]]:
        replies: dict[bytes, list[Argument]] = {}
        acked: dict[str, list[Argument]] = {}
        for entry in starts:
            reply_to, request_id = entry.fields.get(b"reply", b""), entry.fields.get(b"id")
            if self._keys.is_reply_stream(reply_to) and request_id is not None:
                notices = replies.setdefault(reply_to, [])
                notices += (request_id, self._signer.seal_result(reply_to, request_id, STARTED))
        for entry in batch:
            reply_to, request_id = entry.fields.get(b"reply", b""), entry.fields.get(b"id")
            if self._keys.is_reply_stream(reply_to) and request_id is not None and entry.reply is not None:
                fields = replies.get(reply_to)
                if fields is None:
                    fields = replies[reply_to] = []
                fields += (request_id, self._signer.seal_result(reply_to, request_id, entry.reply))
            elif not entry.is_withdrawn:  # a withdrawn one is only acknowledged: its caller gave up
                logger.warning("worker %s: entry %s names no reply stream or id", self._worker_id, entry.entry_id)
            entry_ids = acked.get(entry.stream)
            if entry_ids is None:
                entry_ids = acked[entry.stream] = []
            entry_ids.append(entry.entry_id)
        keys: list[Argument] = [*replies, *acked]
        args: list[Argument] = [GROUP, len(replies)]
        for fields in replies.values():
            args.append(len(fields) // 2)
            args += fields
        for entry_ids in acked.values():
            args.append(len(entry_ids))
            args += entry_ids
        return keys, args

    async def _run_script(self, keys: list[Argument], args: list[Argument]) -> Any:
        """EVALSHA, or EVAL (which caches the script again) when Redis no longer has it (after a restart)."""
        try:
            return await self._connection.execute("EVALSHA", _REPLY_SHA, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await self._connection.execute("EVAL", _REPLY, len(keys), *keys, *args)

    async def aclose(self) -> None:
        """Disconnect its connection; safe twice."""
        await self._connection.aclose()
