"""The Redis store's reads of runs, steps, attempts' logs, contexts and event logs, answered from what Redis holds now.

Each read is one round trip (two for a list of runs) through `RedisConnection.call`, decoded by `layout`;
one that must see a run's keys as one snapshot reads them in a MULTI. Invariant: a read of a run whose hash is
missing raises RunNotFound, whatever its other keys hold. The store flushes its queued writes before calling
any of these, so each sees every write made before it.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from typing import Any

import orjson

from dagrun.contract.states import RunStatus, StepStatus
from dagrun.errors import RunNotFound
from dagrun.store.base import AttemptLog, Event, RunRecord, StepRecord, select_logs
from dagrun.store.redis.connection import RedisConnection
from dagrun.store.redis.layout import LIST_BOTH, RUN_FIELDS
from dagrun.store.redis.records import (
    attempt_log_field,
    decode_attempt_log,
    decode_event,
    decode_run,
    decode_step,
    run_id_of,
    status_of_step,
)
from dagrun.store.redis.wait import Entry, entries_of

logger = logging.getLogger(__name__)

_INDEX_PAGE = 1000  # runs added to the ids' set per round trip by `_index_run_ids`


async def read_run(redis: RedisConnection, run_id: str) -> RunRecord:
    """The run's record; RunNotFound when there is no such run."""
    values = await redis.call(redis.client.hmget(redis.keys.run(run_id), RUN_FIELDS), doing=f"reading run {run_id!r}")
    run = decode_run(values)
    if run is None:
        raise RunNotFound(run_id)
    return run


async def list_runs(
    redis: RedisConnection, *, status: RunStatus | None, flow_name: str | None, limit: int, offset: int = 0
) -> list[RunRecord]:
    """Newest first; with both filters, the smaller set is walked and the other probed (`LIST_BOTH`)."""
    if limit <= 0:
        return []
    keys, client = redis.keys, redis.client
    if status is not None and flow_name is not None:
        both = (keys.runs_with_status(status), keys.runs_of_flow(flow_name))
        members = await redis.call(LIST_BOTH(client, both, (limit, max(offset, 0))), doing="listing runs")
    else:
        chosen = keys.runs_with_status(status) if status is not None else keys.runs
        chosen = keys.runs_of_flow(flow_name) if flow_name is not None else chosen
        start = max(offset, 0)
        members = await redis.call(client.zrevrange(chosen, start, start + limit - 1), doing="listing runs")
    if not members:
        return []
    pipe = client.pipeline(transaction=False)
    for member in members:
        pipe.hmget(keys.run(run_id_of(member)), RUN_FIELDS)
    rows = await redis.call(pipe.execute(), doing="listing runs")
    return [run for run in map(decode_run, rows) if run is not None]


async def find_run_ids(redis: RedisConnection, prefix: str, *, limit: int) -> list[str]:
    """The ids starting with `prefix`, in id order: ZRANGEBYLEX on the ids' set, O(log n + limit), in one round
    trip. When that set holds fewer runs than the runs' set (runs created by a dagrun that kept no such set),
    the missing ones are added first (`_index_run_ids`)."""
    if limit <= 0:
        return []
    keys, client, doing = redis.keys, redis.client, "finding run ids"
    # the prefix then a 0xFF byte sorts after every id with the prefix: no UTF-8 text holds that byte
    lex_range = (f"[{prefix}", b"(" + prefix.encode() + b"\xff")
    pipe = client.pipeline(transaction=True)
    pipe.zcard(keys.runs)
    pipe.zcard(keys.run_ids)
    pipe.zrangebylex(keys.run_ids, *lex_range, start=0, num=limit)
    runs, indexed, found = await redis.call(pipe.execute(), doing=doing)
    if indexed < runs:
        await _index_run_ids(redis)
        found = await redis.call(client.zrangebylex(keys.run_ids, *lex_range, start=0, num=limit), doing=doing)
    return list(found)


async def _index_run_ids(redis: RedisConnection) -> None:
    """Add every run to the ids' set, a page of the runs' set per round trip so that Redis serves other clients
    in between: O(runs), once (runs are never removed, so afterwards both sets hold as many)."""
    keys, client, doing = redis.keys, redis.client, "indexing run ids"
    for start in itertools.count(0, _INDEX_PAGE):
        members = await redis.call(client.zrange(keys.runs, start, start + _INDEX_PAGE - 1), doing=doing)
        if not members:
            return
        await redis.call(client.zadd(keys.run_ids, dict.fromkeys(map(run_id_of, members), 0)), doing=doing)


async def read_steps(redis: RedisConnection, run_id: str) -> list[StepRecord]:
    """Every step of the run, in the flow's order; RunNotFound when there is no such run."""
    keys = redis.keys
    pipe = redis.client.pipeline(transaction=True)  # one snapshot: a step is in both or in neither
    pipe.lrange(keys.step_order(run_id), 0, -1)
    pipe.hgetall(keys.steps(run_id))
    pipe.exists(keys.run(run_id))
    order, states, exists = await redis.call(pipe.execute(), doing=f"reading the steps of run {run_id!r}")
    if not exists:
        raise RunNotFound(run_id)
    steps = [decode_step(run_id, step_id, states.pop(step_id)) for step_id in order if step_id in states]
    steps += (decode_step(run_id, step_id, text) for step_id, text in states.items())  # none in practice
    return steps


async def count_steps(redis: RedisConnection, run_id: str) -> dict[StepStatus, int]:
    """The run's step states counted from their encoded values (each begins with its status), decoding no
    record; RunNotFound when there is no such run."""
    pipe = redis.client.pipeline(transaction=True)
    pipe.hvals(redis.keys.steps(run_id))
    pipe.exists(redis.keys.run(run_id))
    states, exists = await redis.call(pipe.execute(), doing=f"counting the steps of run {run_id!r}")
    if not exists:
        raise RunNotFound(run_id)
    return {StepStatus(status): count for status, count in Counter(map(status_of_step, states)).items()}


async def read_logs(
    redis: RedisConnection, run_id: str, *, step_id: str | None, attempt: int | None
) -> list[AttemptLog]:
    """The run's attempts' logs, chosen and sorted here: one attempt's is one field (what following a run reads
    as each attempt ends), else the whole hash is read. RunNotFound when there is no such run."""
    pipe = redis.client.pipeline(transaction=False)
    one = None if step_id is None or attempt is None else attempt_log_field(step_id, attempt)
    if one is None:
        pipe.hgetall(redis.keys.logs(run_id))
    else:
        pipe.hmget(redis.keys.logs(run_id), [one])
    pipe.exists(redis.keys.run(run_id))
    found, exists = await redis.call(pipe.execute(), doing=f"reading the logs of run {run_id!r}")
    if not exists:
        raise RunNotFound(run_id)
    fields = found.items() if one is None else [(one, value) for value in found if value is not None]
    return select_logs((decode_attempt_log(field, value) for field, value in fields), step_id, attempt)


async def read_context(redis: RedisConnection, run_id: str) -> dict[str, Any]:
    """The run's context as Redis holds it, written by any client; RunNotFound when there is no such run."""
    found, text = await redis.call(
        redis.client.hmget(redis.keys.run(run_id), ("run_id", "context")),
        doing=f"reading the context of run {run_id!r}",
    )
    if found is None:
        raise RunNotFound(run_id)
    value: dict[str, Any] = orjson.loads(text or "{}")
    return value


async def read_events(redis: RedisConnection, run_id: str, *, after_seq: int, limit: int | None) -> list[Event]:
    entries = await read_log(redis, run_id, redis.keys.events(run_id), after_seq, limit, doing="reading the events")
    return [decode_event(run_id, entry_id, fields) for entry_id, fields in entries]


async def read_last_event_seq(redis: RedisConnection, run_id: str) -> int:
    """The run hash's `seq`: the batch script sets it with each event it appends."""
    seq = await redis.call(redis.client.hget(redis.keys.run(run_id), "seq"), doing=f"reading run {run_id!r}")
    if seq is None:
        raise RunNotFound(run_id)
    return int(seq)


async def wait_events(redis: RedisConnection, run_id: str, *, after_seq: int, timeout_s: float) -> list[Event]:
    """The run's events after `after_seq`, waiting up to `timeout_s` on its stream for the first ones."""
    entries = await wait_entries(
        redis, redis.keys.events(run_id), after_seq, timeout_s, doing=f"waiting for the events of run {run_id!r}"
    )
    return [decode_event(run_id, entry_id, fields) for entry_id, fields in entries]


async def read_log(
    redis: RedisConnection, run_id: str, key: str, after_seq: int, limit: int | None, *, doing: str
) -> list[Entry]:
    """The entries of a run's stream `key` with seq > after_seq; RunNotFound when there is no such run."""
    pipe = redis.client.pipeline(transaction=False)
    if limit is None or limit > 0:
        pipe.xrange(key, f"{max(after_seq, 0) + 1}-0", "+", count=limit)
    pipe.exists(redis.keys.run(run_id))
    *entries, exists = await redis.call(pipe.execute(), doing=f"{doing} of run {run_id!r}")
    if not exists:
        raise RunNotFound(run_id)
    return entries[0] if entries else []


async def wait_entries(
    redis: RedisConnection, key: str, after_seq: int, timeout_s: float, *, doing: str
) -> list[Entry]:
    """The entries of stream `key` after ``{after_seq}-0``, waiting up to `timeout_s` for the first ones."""
    after_id = f"{max(after_seq, 0)}-0"
    if timeout_s <= 0:
        return entries_of(await redis.call(redis.client.xread({key: after_id}), doing=doing))
    found: list[Entry] = await redis.call(redis.waiter.wait(key, after_id, timeout_s), doing=doing)
    return found
