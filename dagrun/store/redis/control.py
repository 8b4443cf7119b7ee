"""The Redis store's control plane: each run's command log, the store-wide notice stream, and run leases.

Nothing here is queued behind the store's writer: each call is one script or one read, answered before it
returns. Invariant: a script that appends a command appends its COMMAND notice in the same call, and one
that releases a lease with `notify` its RELEASED notice, so no reader sees one without the other. The store
flushes before a command or a release, so whoever acts on it sees every write made before.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from dagrun.errors import RunNotFound
from dagrun.store.base import Command, CommandKind, Lease, Notice, NoticeKind
from dagrun.store.redis.connection import RedisConnection
from dagrun.store.redis.layout import CLAIM_LEASES, RELEASE_LEASE, SEND_COMMAND
from dagrun.store.redis.query import read_log, wait_entries
from dagrun.store.redis.records import decode_command, decode_notice, seq_of

logger = logging.getLogger(__name__)


async def send_command(redis: RedisConnection, run_id: str, kind: CommandKind, text: str, *, token: str) -> Command:
    """Append the command `text` (from `encode_command`) and its notice; `token` makes a retried send append
    once. RunNotFound when there is no such run."""
    keys = redis.keys
    script_keys = (keys.run(run_id), keys.commands(run_id), keys.notices, keys.notice_counter)
    args = (text, token, run_id, NoticeKind.COMMAND)
    seq = await redis.call(SEND_COMMAND(redis.client, script_keys, args), doing=f"sending {kind} to run {run_id!r}")
    if not seq:
        raise RunNotFound(run_id)
    return decode_command(run_id, seq, text)


async def read_commands(redis: RedisConnection, run_id: str, *, after_seq: int) -> list[Command]:
    """The run's commands with seq > after_seq, oldest first; RunNotFound when there is no such run."""
    entries = await read_log(redis, run_id, redis.keys.commands(run_id), after_seq, None, doing="reading the commands")
    return [decode_command(run_id, seq_of(entry_id), fields["c"]) for entry_id, fields in entries]


async def claim_leases(
    redis: RedisConnection, run_ids: Sequence[str], held: Sequence[int], owner: str, *, ttl_s: float
) -> list[int]:
    """One script call for all the leases, each taken or renewed for at least a millisecond; `held` is the
    epoch `owner` held of each (0 for none). The epoch of each lease claimed, 0 for the others."""
    if not run_ids:
        return []
    keys = [key for run_id in run_ids for key in (redis.keys.lease(run_id), redis.keys.epoch(run_id))]
    args = (owner, max(math.ceil(ttl_s * 1000), 1), *held)
    doing = f"claiming the lease of run {run_ids[0]!r}" if len(run_ids) == 1 else f"claiming {len(run_ids)} leases"
    claimed = await redis.call(CLAIM_LEASES(redis.client, keys, args), doing=doing)
    return [int(epoch) for epoch in claimed]


async def release_lease(redis: RedisConnection, run_id: str, owner: str, *, notify: bool) -> None:
    keys = redis.keys
    script_keys = (keys.lease(run_id), keys.notices, keys.notice_counter)
    args = (owner, run_id, NoticeKind.RELEASED if notify else "")
    await redis.call(RELEASE_LEASE(redis.client, script_keys, args), doing=f"releasing the lease of run {run_id!r}")


async def read_lease(redis: RedisConnection, run_id: str) -> Lease | None:
    """The expiry is the server's remaining ttl from our clock now, so clocks need not agree."""
    key = redis.keys.lease(run_id)
    pipe = redis.client.pipeline(transaction=True)  # the owner, ttl and epoch as of one moment
    pipe.get(key)
    pipe.pttl(key)
    pipe.get(redis.keys.epoch(run_id))
    owner, ttl_ms, epoch = await redis.call(pipe.execute(), doing=f"reading the lease of run {run_id!r}")
    return None if owner is None else Lease(owner, time.time() + max(ttl_ms, 0) / 1000, int(epoch or 0))


async def read_notice_cursor(redis: RedisConnection) -> int:
    cursor = await redis.call(redis.client.get(redis.keys.notice_counter), doing="reading the notice cursor")
    return int(cursor or 0)


async def wait_notices(redis: RedisConnection, *, after: int, timeout_s: float) -> list[Notice]:
    """Notices with cursor > after, waiting up to `timeout_s` on the notices stream for the first ones."""
    entries = await wait_entries(redis, redis.keys.notices, after, timeout_s, doing="waiting for notices")
    return [decode_notice(entry_id, fields) for entry_id, fields in entries]
