"""The Store contract for what lets processes share runs: commands, notices, leases and waiting.

Each test runs on every store kind. "Another process" is a second store opened on the same file or
Redis prefix (for memory, the same store: it has no other way in).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from dagrun.contract.executor import ErrorKind, StepError
from dagrun.contract.states import RunStatus, StepStatus
from dagrun.errors import RunNotFound
from dagrun.store import StepRecord, Store
from dagrun.store.base import CommandKind, NoticeKind
from tests.store.conftest import StoreFactory, create


async def _second(store: StoreFactory, first: Store) -> Store:
    """A store that sees what `first` wrote, as another process would."""
    return first if store.kind == "memory" else store()


async def test_commands_get_per_run_seqs_and_read_back_in_order(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1")
    await create(s, "r2")
    values = {"approved": True, "by": ["ann"]}

    first = await s.send_command("r1", CommandKind.PAUSE, at=1.0)
    second = await s.send_command("r1", CommandKind.SIGNAL, at=2.0, step_id="b", values=values)
    other = await s.send_command("r2", CommandKind.CANCEL, at=3.0)
    values["by"].append("mallory")  # the store holds a copy

    assert (first.seq, second.seq, other.seq) == (1, 2, 1)
    commands = await s.get_commands("r1")
    assert [(c.seq, c.run_id, c.at, c.kind, c.step_id) for c in commands] == [
        (1, "r1", 1.0, CommandKind.PAUSE, None),
        (2, "r1", 2.0, CommandKind.SIGNAL, "b"),
    ]
    assert commands[0].values == {}
    assert commands[1].values == {"approved": True, "by": ["ann"]}
    assert [c.seq for c in await s.get_commands("r1", after_seq=1)] == [2]
    assert await s.get_commands("r1", after_seq=2) == []


async def test_commands_from_another_process_continue_the_seq(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1")
    await s.send_command("r1", CommandKind.PAUSE, at=1.0)
    other = await _second(store, s)
    assert (await other.send_command("r1", CommandKind.RESUME, at=2.0)).seq == 2
    assert (await s.send_command("r1", CommandKind.CANCEL, at=3.0)).seq == 3
    assert [c.kind for c in await other.get_commands("r1")] == ["pause", "resume", "cancel"]


@pytest.mark.parametrize("call", ["send_command", "get_commands", "wait_events"])
async def test_commands_and_waits_on_an_unknown_run_raise_run_not_found(store: StoreFactory, call: str) -> None:
    s = store()
    with pytest.raises(RunNotFound):
        if call == "send_command":
            await s.send_command("nope", CommandKind.CANCEL, at=1.0)
        elif call == "get_commands":
            await s.get_commands("nope")
        else:
            await s.wait_events("nope", after_seq=0, timeout_s=0.1)


async def test_events_from_two_processes_share_one_gap_free_seq(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1", ["a"])
    await s.set_run_status("r1", RunStatus.RUNNING, at=1.0)
    await s.flush()
    other = await _second(store, s)
    await other.set_run_status("r1", RunStatus.PAUSED, at=2.0)
    await other.flush()
    await s.record_step(StepRecord("r1", "a", StepStatus.RUNNING, 1))
    await s.flush()
    await other.set_run_status("r1", RunStatus.RUNNING, at=3.0)
    await other.flush()

    events = await s.get_events("r1")
    assert [(e.seq, e.status) for e in events] == [(1, "running"), (2, "paused"), (3, "running"), (4, "running")]


async def test_creating_a_run_and_sending_a_command_append_notices(store: StoreFactory) -> None:
    s = store()
    start = await s.notice_cursor()
    await create(s, "r1")
    await s.send_command("r1", CommandKind.CANCEL, at=1.0)

    notices = await s.wait_notices(after=start, timeout_s=0)
    assert [(n.run_id, n.kind) for n in notices] == [("r1", NoticeKind.SUBMITTED), ("r1", NoticeKind.COMMAND)]
    assert notices[0].cursor < notices[1].cursor == await s.notice_cursor()
    assert await s.wait_notices(after=notices[0].cursor, timeout_s=0) == notices[1:]


async def test_wait_notices_times_out_empty(store: StoreFactory) -> None:
    s = store()
    cursor = await s.notice_cursor()
    started = time.monotonic()
    assert await s.wait_notices(after=cursor, timeout_s=0.2) == []
    assert 0.15 < time.monotonic() - started < 2.0


async def test_wait_notices_wakes_on_a_submission_from_another_process(store: StoreFactory) -> None:
    s = store()
    cursor = await s.notice_cursor()
    waiting = asyncio.create_task(s.wait_notices(after=cursor, timeout_s=10))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    started = time.monotonic()
    await create(await _second(store, s), "r1")

    notices = await asyncio.wait_for(waiting, 5)
    assert [(n.run_id, n.kind) for n in notices] == [("r1", NoticeKind.SUBMITTED)]
    assert time.monotonic() - started < 1.0  # woken, not found by the timeout


async def test_wait_events_returns_at_once_when_there_are_some(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1")
    await s.set_run_status("r1", RunStatus.RUNNING, at=1.0)
    await s.set_run_status("r1", RunStatus.SUCCEEDED, at=2.0)
    assert [e.seq for e in await s.wait_events("r1", after_seq=0, timeout_s=10)] == [1, 2]
    assert [e.seq for e in await s.wait_events("r1", after_seq=1, timeout_s=10)] == [2]


async def test_wait_events_wakes_on_a_write_from_another_process(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1", ["a"])
    await s.set_run_status("r1", RunStatus.RUNNING, at=1.0)
    await s.flush()
    other = await _second(store, s)
    waiting = asyncio.create_task(other.wait_events("r1", after_seq=1, timeout_s=10))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await s.record_step(StepRecord("r1", "a", StepStatus.RUNNING, 1))
    await s.flush()

    events = await asyncio.wait_for(waiting, 5)
    assert [(e.seq, e.step_id) for e in events] == [(2, "a")]


async def test_wait_events_times_out_empty(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1")
    started = time.monotonic()
    assert await s.wait_events("r1", after_seq=0, timeout_s=0.2) == []
    assert 0.15 < time.monotonic() - started < 2.0


async def test_a_lease_is_held_by_one_owner_until_released(store: StoreFactory) -> None:
    s = store()
    other = await _second(store, s)
    assert await s.get_lease("r1") is None
    before = time.time()
    assert await s.claim_lease("r1", "orch-a", ttl_s=30)
    assert not await other.claim_lease("r1", "orch-b", ttl_s=30)
    assert await s.claim_lease("r1", "orch-a", ttl_s=30)  # a renewal

    lease = await other.get_lease("r1")
    assert lease is not None
    assert lease.owner == "orch-a"
    assert before + 29 < lease.expires_at < time.time() + 31

    await other.release_lease("r1", "orch-b")  # not its lease: nothing happens
    assert not await other.claim_lease("r1", "orch-b", ttl_s=30)
    await s.release_lease("r1", "orch-a")
    assert await s.get_lease("r1") is None
    assert await other.claim_lease("r1", "orch-b", ttl_s=30)


async def test_a_lease_that_is_not_renewed_lapses(store: StoreFactory) -> None:
    s = store()
    assert await s.claim_lease("r1", "orch-a", ttl_s=0.2)
    assert not await s.claim_lease("r1", "orch-b", ttl_s=0.2)
    await asyncio.sleep(0.3)
    assert await s.get_lease("r1") is None
    assert await s.claim_lease("r1", "orch-b", ttl_s=30)
    assert not await s.claim_lease("r1", "orch-a", ttl_s=30)  # the lapsed owner cannot renew


async def test_claim_leases_claims_each_run_as_claim_lease_would(store: StoreFactory) -> None:
    s = store()
    other = await _second(store, s)
    assert await s.claim_lease("mine", "orch-a", ttl_s=30)
    assert await other.claim_lease("theirs", "orch-b", ttl_s=30)
    assert await other.claim_lease("lapsed", "orch-b", ttl_s=0.1)
    await asyncio.sleep(0.2)

    claimed = await s.claim_leases(["free", "mine", "theirs", "lapsed"], "orch-a", ttl_s=30)

    assert claimed == [True, True, False, True]
    leases = [await other.get_lease(run_id) for run_id in ("free", "mine", "theirs", "lapsed")]
    assert [lease.owner if lease else None for lease in leases] == ["orch-a", "orch-a", "orch-b", "orch-a"]
    assert await s.claim_leases([], "orch-a", ttl_s=30) == []


async def test_releasing_with_notify_appends_a_released_notice(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1")
    cursor = await s.notice_cursor()
    await s.claim_lease("r1", "orch-a", ttl_s=30)
    await s.release_lease("r1", "orch-a", notify=True)
    notices = await s.wait_notices(after=cursor, timeout_s=0)
    assert [(n.run_id, n.kind) for n in notices] == [("r1", NoticeKind.RELEASED)]


async def test_step_elapsed_time_round_trips(store: StoreFactory) -> None:
    s = store()
    await create(s, "r1", ["a"])
    error = StepError(ErrorKind.SCRIPT, "ValueError", "bad", 3)
    await s.record_step(StepRecord("r1", "a", StepStatus.FAILED, 1, 1.0, 2.0, error=error, elapsed_ms=12.5))
    step = (await s.get_steps("r1"))[0]
    assert step.elapsed_ms == 12.5
    assert step.error == error
