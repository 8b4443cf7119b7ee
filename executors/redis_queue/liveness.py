"""Worker liveness: a worker is live while its heartbeat key (its WorkerStatus as JSON, with a TTL) exists.

A consumer of a request stream without a heartbeat is dead: live workers claim its pending entries and
then forget it. Callers ask the same question (is any consumer of this context live?) before they give
up on a step, and `dagrun workers --redis URL` lists the heartbeats.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import orjson
import pydantic
import redis.asyncio as aioredis
import redis.exceptions

from dagrun.contract.transport import WorkerStatus
from dagrun.errors import ExecutorError, redact
from executors.redis_queue.connection import CONNECTION_ERRORS, GROUP, Keys, QueueSettings, check_connection, open_redis

logger = logging.getLogger(__name__)

# Forget a dead consumer only if it still has no heartbeat and no pending entry: XGROUP DELCONSUMER
# drops a consumer's pending entries, which would lose steps; the check and the delete are atomic here.
_FORGET_CONSUMER = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""


class _StatusModel(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    worker_id: str
    host: str
    pid: int
    contexts: tuple[str, ...]
    current: tuple[str, ...]
    steps_done: int
    errors: int
    started_at: float
    heartbeat_at: float


def encode_status(status: WorkerStatus) -> bytes:
    return orjson.dumps(dataclasses.asdict(status))


def decode_status(data: bytes) -> WorkerStatus:
    """Parse a heartbeat; pydantic.ValidationError when it is not a WorkerStatus."""
    return WorkerStatus(**dict(_StatusModel.model_validate_json(data)))


@dataclass(frozen=True, slots=True)
class Consumer:
    """A consumer of one request stream, as the group sees it."""

    name: str
    pending: int  # entries delivered to it and not acknowledged
    is_live: bool  # its heartbeat key exists


async def consumers(client: aioredis.Redis, keys: Keys, stream: str) -> list[Consumer]:
    """The consumers of `stream`'s group with their liveness; [] when the stream or group does not exist."""
    try:
        infos = await client.xinfo_consumers(stream, GROUP)
    except redis.exceptions.ResponseError:
        return []  # no stream or no group yet: nobody has served this context
    if not infos:
        return []
    names = [info["name"].decode() for info in infos]
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.exists(keys.heartbeat(name))
        found = await pipe.execute()
    return [
        Consumer(name, int(info["pending"]), bool(live)) for name, info, live in zip(names, infos, found, strict=True)
    ]


async def forget_consumer(client: aioredis.Redis, keys: Keys, stream: str, name: str) -> bool:
    """Delete a dead consumer that holds nothing; False when it is live again or still holds entries."""
    deleted = await client.eval(_FORGET_CONSUMER, 2, stream, keys.heartbeat(name), GROUP, name)
    return int(deleted) >= 0


async def list_workers(url: str) -> list[WorkerStatus]:
    """The live workers on the queue at `url` (their last heartbeats), sorted by id.

    Raises ExecutorError (credentials hidden) when Redis cannot be reached."""
    settings = QueueSettings.from_url(url)
    keys = settings.keys
    client = open_redis(settings)
    try:
        await check_connection(client, settings)
        try:
            found = [key async for key in client.scan_iter(match=keys.heartbeat_pattern(), count=500)]
            values = await client.mget(found) if found else []
        except CONNECTION_ERRORS as exc:
            raise ExecutorError(f"cannot read workers from redis at {settings.where}: {redact(str(exc))}") from exc
    finally:
        await client.aclose()
    statuses = []
    for key, value in zip(found, values, strict=True):
        if not isinstance(value, bytes):
            continue  # expired between SCAN and MGET
        try:
            statuses.append(decode_status(value))
        except pydantic.ValidationError:
            logger.warning("redis at %s: ignoring malformed heartbeat %s", settings.where, key.decode(errors="replace"))
    return sorted(statuses, key=lambda status: status.worker_id)
