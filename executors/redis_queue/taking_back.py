"""Taking a request back unrun: how the queued steps of a paused run leave a Redis queue.

A caller that withdraws a step it will send again later (a pause, not a cancel) must not stop a worker
that took it. So, unlike a cancel (`cancellation`), it sends no notice: it deletes the entry only if no
consumer of the group has read it, atomically (`TAKE_BACK`, one script call). A worker's XREADGROUP comes
either before it (the worker holds the entry: the step runs, and its result comes back as usual) or after
it (the entry is gone: no worker ever sees it).
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
import redis.exceptions

from dagrun.contract.dispatch import Withdrawn
from dagrun.errors import redact
from executors.redis_queue.connection import CONNECTION_ERRORS, GROUP
from executors.redis_queue.waiting import Call

logger = logging.getLogger(__name__)

TAKE_BACK_ERRORS: tuple[type[Exception], ...] = (*CONNECTION_ERRORS, redis.exceptions.ResponseError)

# KEYS[1]: a request stream; ARGV[1]: the consumer group, ARGV[2]: an entry id. 1 when the entry was there
# and no consumer had read it (it is deleted now), else 0: a worker holds it, or answered it and deleted it.
# A stream no worker has made a group for yet has no reader either.
TAKE_BACK = """
local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if type(pending) == 'table' and not pending.err and #pending > 0 then return 0 end
return redis.call('XDEL', KEYS[1], ARGV[2])
"""


async def take_back(client: aioredis.Redis, call: Call, *, caller_id: str) -> None:
    """End `call` with Withdrawn if its entry is deleted before any worker read it; else it runs on, and
    its result comes as any other (so too when Redis cannot be reached: logged)."""
    assert call.entry_id is not None
    try:
        deleted = await client.eval(TAKE_BACK, 1, call.stream, GROUP, call.entry_id)
    except TAKE_BACK_ERRORS as exc:
        logger.warning(
            "redis caller %s: cannot take back entry %s of %s (%s); it stays queued",
            caller_id, call.entry_id.decode(), call.stream, redact(str(exc)),
        )  # fmt: skip
        deleted = 0
    if deleted and not call.future.done():
        call.future.set_exception(Withdrawn())
    call.is_wanted_back = False
