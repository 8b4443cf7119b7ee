"""The calls a Redis caller waits on, and how they fail when no worker serves their context.

A `Call` is one `RedisExecutor.call` from its submission to its result. `fail_unserved_calls` asks about
once a second whether each context with waiting calls has a live worker (`liveness`): there is no event
for a worker's death. A call whose context has had none for `queue_timeout_s`, counted from when the
call was submitted or the context was last seen served (whichever is later), fails with
WorkerUnavailable, naming why (no live worker, or Redis unreachable) and the command that starts one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from dagrun.contract.dispatch import Dispatch
from dagrun.contract.executor import StepRequest, StepResult
from dagrun.errors import WorkerUnavailable, redact
from executors.redis_queue.connection import CONNECTION_ERRORS, QueueSettings
from executors.redis_queue.liveness import consumers


@dataclass(slots=True, eq=False)
class Call:
    request: StepRequest
    request_id: bytes
    context_id: str
    stream: str
    fields: tuple[bytes, ...]  # of its XADD: id, reply stream, envelope and signature (`Signer.request_fields`)
    future: asyncio.Future[StepResult]
    submitted_at: float  # time.monotonic()
    dispatch: Dispatch | None = None  # its caller's link: told when the step started, may take it back
    entry_id: bytes | None = None  # its entry in the request stream, once written
    is_wanted_back: bool = False  # its caller is taking it back (`taking_back`): not lost, not refused


async def fail_unserved_calls(client: aioredis.Redis, settings: QueueSettings, waiting: Mapping[bytes, Call]) -> None:
    """Until cancelled: fail the calls in `waiting` of a context that has had no live worker for `queue_timeout_s`."""
    unserved_since: dict[str, float] = {}
    interval_s = min(1.0, settings.queue_timeout_s / 4)
    while True:
        await asyncio.sleep(interval_s)  # a liveness check, like a heartbeat: there is no event for a death
        contexts = {call.context_id for call in waiting.values()}
        for context_id in list(unserved_since):
            if context_id not in contexts:
                del unserved_since[context_id]
        for context_id in contexts:
            reason = await _unserved_reason(client, settings, context_id)
            if reason is None:
                unserved_since.pop(context_id, None)
            else:
                since = unserved_since.setdefault(context_id, time.monotonic())
                _fail_unserved(waiting.values(), settings, context_id, since, reason)


async def _unserved_reason(client: aioredis.Redis, settings: QueueSettings, context_id: str) -> str | None:
    """None when a live worker serves the context, else why not."""
    try:
        found = await consumers(client, settings.keys, settings.keys.requests(context_id))
    except CONNECTION_ERRORS as exc:
        return f"redis at {settings.where} is unreachable ({redact(str(exc))})"
    if any(consumer.is_live for consumer in found):
        return None
    return f"no live worker serves context {context_id!r} on redis at {settings.where}"


def _fail_unserved(calls: Iterable[Call], settings: QueueSettings, context_id: str, since: float, reason: str) -> None:
    now = time.monotonic()
    timeout_s = settings.queue_timeout_s
    for call in calls:
        waited_s = now - max(since, call.submitted_at)
        if call.context_id == context_id and not call.future.done() and waited_s >= timeout_s:
            request = call.request
            message = (
                f"run {request.run_id} step {request.step_id!r} attempt {request.attempt}: {reason} "
                f"(waited {timeout_s:g} s); start one with `dagrun worker redis URL --context {context_id}`"
            )
            call.future.set_exception(WorkerUnavailable(message))
