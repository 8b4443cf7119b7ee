"""The orchestrator's control API on every store: start, status, pause/resume, cancel, signal, errors,
metrics, pending work, checkpoint, and control from another process (a second store on the same data)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, cast

import pytest

from dagrun import ControlError, Orchestrator, RunStatus, StepStatus, parse_flow
from dagrun.engine.control import RunControl, new_run_id
from dagrun.store import MemoryStore
from dagrun.store.base import Command, CommandKind, Store
from tests.control.conftest import gated_flow
from tests.control_support import wait_for_event, wait_until_waiting
from tests.store.conftest import StoreFactory


async def _other(stores: StoreFactory, first: Store) -> Store:
    """What another process sees: a second store on the same data (memory has only the one)."""
    return first if stores.kind == "memory" else stores()


async def _statuses(store: Store, run_id: str) -> dict[str, StepStatus]:
    return {step.step_id: step.status for step in await store.get_steps(run_id)}


async def test_start_run_returns_at_once_and_the_run_completes_in_the_background(stores: StoreFactory) -> None:
    store = stores()
    async with Orchestrator(store, processes=1) as orchestrator:
        started = time.monotonic()
        run_id = await orchestrator.start_run(gated_flow())
        assert time.monotonic() - started < 2
        assert (await orchestrator.control.status(run_id)).run.status in (RunStatus.PENDING, RunStatus.RUNNING)
        await wait_until_waiting(orchestrator, run_id, "gate")
        await wait_for_event(store, run_id, "succeeded", "side")
        view = await orchestrator.control.status(run_id)
        assert view.driver == orchestrator.owner
        assert view.steps[1].status == StepStatus.WAITING
        assert [step.step_id for step in await orchestrator.control.pending_work(run_id)] == ["gate", "after", "last"]

        await orchestrator.control.signal(run_id, "gate", {"ok": True})
        run = await orchestrator.control.wait_for_completion(run_id, timeout_s=30)

        assert run.status == RunStatus.SUCCEEDED
        checkpoint = await orchestrator.control.checkpoint(run_id)
        outputs = {step.step_id: step.outputs for step in checkpoint.view.steps}
        assert outputs["last"] == {"done": 2}
        assert outputs["gate"] == {"ok": True}
        assert checkpoint.view.context == {"hits": 2}
        assert [command.kind for command in checkpoint.commands] == [CommandKind.SIGNAL]
        assert checkpoint.to_json()["context"] == {"hits": 2}
        assert (await orchestrator.control.status(run_id)).driver is None  # the lease was given up
        assert await orchestrator.control.pending_work(run_id) == []


async def test_resume_of_a_run_driven_here_or_by_a_live_orchestrator_returns_none_at_once(
    stores: StoreFactory,
) -> None:
    store = stores()
    async with Orchestrator(store, processes=1) as driving, Orchestrator(await _other(stores, store)) as other:
        run_id = await driving.start_run(gated_flow())
        await wait_until_waiting(driving, run_id, "gate")

        assert await driving.resume(run_id) is None  # driven here: no second driver
        started = time.monotonic()
        assert await other.resume(run_id) is None  # its driver answered the resume
        assert time.monotonic() - started < 10  # not the 15 s of the lease (or a third of it, a renewal)

        await driving.control.signal(run_id, "gate", {"ok": True})
        run = await driving.control.wait_for_completion(run_id, timeout_s=30)
        assert run.status == RunStatus.SUCCEEDED
        events = await store.get_events(run_id)
        assert sum(event.kind == "step" and event.status == "succeeded" for event in events) == 5  # each once


async def test_pause_starts_no_new_step_until_resume(stores: StoreFactory) -> None:
    store = stores()
    async with Orchestrator(store, processes=1) as orchestrator:
        run_id = await orchestrator.start_run(gated_flow())
        await wait_until_waiting(orchestrator, run_id, "gate")
        await orchestrator.control.pause(run_id)
        assert (await store.get_run(run_id)).status == RunStatus.PAUSED

        await orchestrator.control.signal(run_id, "gate", {"ok": 1})  # the waiting step completes ...
        await wait_for_event(store, run_id, "succeeded", "gate")
        await asyncio.sleep(0.3)
        statuses = await _statuses(store, run_id)
        assert statuses["after"] == StepStatus.PENDING  # ... but nothing new starts while paused
        assert (await store.get_run(run_id)).status == RunStatus.PAUSED

        await orchestrator.control.resume(run_id)
        run = await orchestrator.control.wait_for_completion(run_id, timeout_s=30)
    assert run.status == RunStatus.SUCCEEDED
    statuses_seen = [e.status for e in await store.get_events(run_id) if e.kind == "run"]
    assert statuses_seen == ["running", "paused", "running", "succeeded"]


async def test_cancel_ends_the_run_cancelled_and_stops_what_runs(stores: StoreFactory) -> None:
    store = stores()
    flow = parse_flow(
        {
            "name": "long",
            "steps": [
                {"id": "spin", "script": "n = 0\nwhile True:\n    n += 1", "timeout_s": 60},
                {"id": "gate", "wait_for": {"fields": ["ok"]}},
                {"id": "after", "depends_on": ["gate", "spin"], "script": "pass"},
            ],
        }
    )
    async with Orchestrator(store, processes=1) as orchestrator:
        run_id = await orchestrator.start_run(flow)
        await wait_for_event(store, run_id, "running", "spin")
        await wait_until_waiting(orchestrator, run_id, "gate")
        started = time.monotonic()
        command = await orchestrator.control.cancel(run_id)
        run = await orchestrator.control.wait_for_completion(run_id, timeout_s=30)
        assert time.monotonic() - started < 10  # the spinning step was stopped, not waited for
    assert command.kind == CommandKind.CANCEL
    assert run.status == RunStatus.CANCELLED
    assert await _statuses(store, run_id) == dict.fromkeys(["spin", "gate", "after"], StepStatus.CANCELLED)
    with pytest.raises(ControlError, match="already ended cancelled"):
        await RunControl(store).resume(run_id)


async def test_commands_from_another_process_reach_the_driver(stores: StoreFactory) -> None:
    store = stores()
    async with Orchestrator(store, processes=1) as orchestrator:
        run_id = await orchestrator.start_run(gated_flow())
        await wait_until_waiting(orchestrator, run_id, "gate")
        remote = RunControl(await _other(stores, store))
        await remote.pause(run_id)
        await wait_for_event(store, run_id, "paused")
        await remote.signal(run_id, "gate", {"ok": True})
        await wait_for_event(store, run_id, "succeeded", "gate")
        await remote.resume(run_id)
        run = await remote.wait_for_completion(run_id, timeout_s=30)
    assert run.status == RunStatus.SUCCEEDED


async def test_any_run_control_on_the_store_reaches_a_driver_here_before_its_call_returns(
    stores: StoreFactory,
) -> None:
    store = stores()
    async with Orchestrator(store, processes=1) as orchestrator:
        run_id = await orchestrator.start_run(gated_flow())
        await wait_until_waiting(orchestrator, run_id, "gate")
        another = RunControl(store)  # not the orchestrator's: the same store object is enough

        await another.pause(run_id)
        assert (await store.get_run(run_id)).status == RunStatus.PAUSED  # applied, not only sent
        await another.signal(run_id, "gate", {"ok": True})
        await wait_for_event(store, run_id, "succeeded", "gate")
        await another.cancel(run_id)
        run = await another.wait_for_completion(run_id, timeout_s=30)
        assert run.status == RunStatus.CANCELLED
        assert (await another.status(run_id)).driver is None  # waited for the drive to end, lease given up


def test_run_ids_made_at_a_high_rate_do_not_collide() -> None:
    run_ids = [new_run_id() for _ in range(100_000)]  # within a second or so, as under a load test
    assert len(set(run_ids)) == len(run_ids)


async def test_the_watcher_renews_every_lease_it_holds_in_one_store_call(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    renewals: list[int] = []  # runs per claim_leases call
    claim_leases = store.claim_leases

    async def counted(run_ids: Sequence[str], owner: str, *, ttl_s: float) -> list[bool]:
        renewals.append(len(run_ids))
        return await claim_leases(run_ids, owner, ttl_s=ttl_s)

    monkeypatch.setattr(store, "claim_leases", counted)
    async with store, Orchestrator(store, processes=1, lease_s=1.5) as orchestrator:
        run_ids = [await orchestrator.start_run(gated_flow()) for _ in range(20)]
        for run_id in run_ids:
            await wait_until_waiting(orchestrator, run_id, "gate")
        renewals.clear()
        await asyncio.sleep(1.2)  # two renewals, one every 0.5 s

        # A call per run queued each renewal behind every other store call of a busy server, until
        # drivers stopped for leases they could not renew in time.
        assert renewals and set(renewals) == {len(run_ids)}, renewals
        for run_id in run_ids:
            await orchestrator.control.cancel(run_id)
        for run_id in run_ids:
            assert (await orchestrator.control.wait_for_completion(run_id, timeout_s=30)).status == RunStatus.CANCELLED


async def test_lease_renewals_do_not_wait_for_the_recheck_of_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    renewals = 0
    claim_leases = store.claim_leases
    get_commands = store.get_commands
    commands_readable = asyncio.Event()

    async def counted(run_ids: Sequence[str], owner: str, *, ttl_s: float) -> list[bool]:
        nonlocal renewals
        renewals += 1
        return await claim_leases(run_ids, owner, ttl_s=ttl_s)

    async def held_up(run_id: str, *, after_seq: int = 0) -> list[Command]:
        await commands_readable.wait()  # as under load, when each of 1500 runs' reads queues for a connection
        return await get_commands(run_id, after_seq=after_seq)

    monkeypatch.setattr(store, "claim_leases", counted)
    async with store, Orchestrator(store, processes=1, lease_s=0.9) as orchestrator:
        run_ids = [await orchestrator.start_run(gated_flow()) for _ in range(3)]
        for run_id in run_ids:
            await wait_until_waiting(orchestrator, run_id, "gate")
        monkeypatch.setattr(store, "get_commands", held_up)
        renewals = 0
        await asyncio.sleep(2.5)  # renewals every 0.3 s; the recheck of commands (every 0.9 s) hangs

        assert renewals >= 5
        assert [(await store.get_lease(run_id)) is not None for run_id in run_ids] == [True] * 3
        assert [(await store.get_run(run_id)).status for run_id in run_ids] == [RunStatus.RUNNING] * 3
        commands_readable.set()
        for run_id in run_ids:
            await orchestrator.control.cancel(run_id)
        for run_id in run_ids:
            assert (await orchestrator.control.wait_for_completion(run_id, timeout_s=30)).status == RunStatus.CANCELLED


async def test_a_signal_sent_before_the_step_waits_is_kept_for_it(stores: StoreFactory) -> None:
    store = stores()
    async with Orchestrator(store, processes=1) as orchestrator:
        run_id = await orchestrator.start_run(gated_flow())
        await orchestrator.control.signal(run_id, "gate", {"ok": "early"})
        run = await orchestrator.control.wait_for_completion(run_id, timeout_s=30)
        assert run.status == RunStatus.SUCCEEDED
        assert (await store.get_steps(run_id))[1].outputs == {"ok": "early"}


async def test_a_step_still_waiting_after_a_takeover_is_not_logged_as_waiting_again(stores: StoreFactory) -> None:
    store = stores()
    async with Orchestrator(store, processes=1) as first:
        run_id = await first.start_run(gated_flow())
        await wait_until_waiting(first, run_id, "gate")
    # the first orchestrator handed the run back; another takes it over and the step goes on waiting
    async with Orchestrator(await _other(stores, store), processes=1) as second:
        driving = asyncio.ensure_future(second.drive(run_id))
        await second.control.signal(run_id, "gate", {"ok": True})
        result = await asyncio.wait_for(driving, 30)
    assert result is not None and result.status == RunStatus.SUCCEEDED
    waits = [event for event in await store.get_events(run_id) if event.status == "waiting"]
    assert [(event.step_id, event.attempt) for event in waits] == [("gate", 1)]


async def test_a_wait_for_step_fails_at_its_timeout(stores: StoreFactory) -> None:
    store = stores()
    async with Orchestrator(store, processes=1) as orchestrator:
        run_id = await orchestrator.start_run(gated_flow(timeout_s=0.3))
        run = await orchestrator.control.wait_for_completion(run_id, timeout_s=30)
        failures = await orchestrator.control.errors(run_id)
    assert run.status == RunStatus.FAILED
    assert [(f.step_id, f.error.kind, f.error.type) for f in failures] == [("gate", "timeout", "SignalTimeout")]
    assert "no signal within 0.3 s" in failures[0].error.message
    statuses = await _statuses(store, run_id)
    assert (statuses["after"], statuses["last"], statuses["side"]) == (
        StepStatus.SKIPPED,
        StepStatus.SKIPPED,
        StepStatus.SUCCEEDED,
    )


@pytest.mark.parametrize(
    ("step_id", "values", "message"),
    [
        ("nope", {"ok": 1}, "has no step 'nope'"),
        ("first", {"ok": 1}, "step 'first' runs a script"),
        ("gate", {}, "waits for ok: missing ok"),
        ("gate", {"ok": 1, "extra": 2}, "unknown extra"),
    ],
)
async def test_signals_that_do_not_fit_are_refused_and_not_sent(
    stores: StoreFactory, step_id: str, values: dict[str, int], message: str
) -> None:
    store = stores()
    control = RunControl(store)
    run_id = await control.submit(gated_flow())
    with pytest.raises(ControlError, match=message):
        await control.signal(run_id, step_id, values)
    assert await store.get_commands(run_id) == []


async def test_an_undriven_run_shows_pause_resume_and_cancel_at_once(stores: StoreFactory) -> None:
    store = stores()
    control = RunControl(store)
    run_id = await control.submit(gated_flow())
    assert (await control.status(run_id)).run.status == RunStatus.PENDING
    await control.pause(run_id)
    assert (await control.status(run_id)).run.status == RunStatus.PAUSED
    await control.resume(run_id)
    assert (await control.status(run_id)).run.status == RunStatus.PENDING
    await control.cancel(run_id)
    view = await control.status(run_id)
    assert view.run.status == RunStatus.CANCELLED
    assert {step.status for step in view.steps} == {StepStatus.CANCELLED}
    assert view.driver is None
    assert [c.kind for c in await store.get_commands(run_id)] == ["pause", "resume", "cancel"]


async def test_errors_and_metrics_describe_a_failed_run(stores: StoreFactory) -> None:
    store = stores()
    flow = parse_flow(
        {
            "name": "flaky",
            "steps": [
                {"id": "ok", "script": "outputs['x'] = 1"},
                {"id": "bad", "script": "log('trying')\nraise ValueError('no luck')", "retries": {"max_attempts": 2}},
            ],
        }
    )
    async with Orchestrator(store, processes=1) as orchestrator:
        result = await orchestrator.run(flow)
        failures = await orchestrator.control.errors(result.run_id)
        metrics = await orchestrator.control.metrics(result.run_id)
    assert result.status == RunStatus.FAILED
    assert [(f.step_id, f.attempt, f.error.type, f.error.line) for f in failures] == [("bad", 2, "ValueError", 2)]
    assert "trying" in failures[0].logs
    assert failures[0].source_line == "raise ValueError('no luck')"
    by_step = {step.step_id: step for step in metrics.steps}
    assert (by_step["bad"].attempts, by_step["bad"].retries) == (2, 1)
    assert (by_step["ok"].attempts, by_step["ok"].retries) == (1, 0)
    assert metrics.attempts == 3 and metrics.retries == 1
    ok = by_step["ok"]
    assert ok.duration_s is not None and ok.run_s is not None and ok.queue_wait_s is not None
    # queued until a sandbox process started it, then it ran; the rest is the trip of the request and result
    assert ok.run_s > 0 and ok.queue_wait_s >= 0 and ok.run_s + ok.queue_wait_s <= ok.duration_s + 1e-3
    document = metrics.to_json()
    assert document["steps_by_status"] == {"succeeded": 1, "failed": 1}
    assert document["wall_s"] is not None and document["wall_s"] >= document["queue_wait_s"] / 2


async def test_list_runs_filters_by_status_and_flow(stores: StoreFactory) -> None:
    store = stores()
    async with Orchestrator(store, processes=1) as orchestrator:
        done = (await orchestrator.run(parse_flow({"name": "quick", "steps": [{"id": "a", "script": "pass"}]}))).run_id
        waiting = await orchestrator.start_run(gated_flow())
        await wait_until_waiting(orchestrator, waiting, "gate")
        assert [r.run_id for r in await orchestrator.control.list_runs(status=RunStatus.RUNNING)] == [waiting]
        assert [r.run_id for r in await orchestrator.control.list_runs(flow_name="quick")] == [done]
        assert [r.run_id for r in await orchestrator.control.list_runs(limit=1)] == [waiting]
        await orchestrator.control.cancel(waiting)


async def test_a_second_signal_with_other_values_is_refused_naming_the_first(stores: StoreFactory) -> None:
    store = stores()
    control = RunControl(await _other(stores, store))
    run_id = await RunControl(store).submit(gated_flow())
    first = await RunControl(store).signal(run_id, "gate", {"ok": True})

    for other in ({"ok": False}, {"ok": 1}):  # 1 is not true: the step's output would differ
        with pytest.raises(ControlError) as refused:
            await control.signal(run_id, "gate", other)
        message = str(refused.value)
        assert f"run {run_id!r}: step 'gate' already has a signal, and the first one counts" in message
        assert f"command {first.seq}, sent " in message and 'with {"ok":true}' in message

    assert await store.get_commands(run_id) == [first]


async def test_repeating_a_signal_with_the_same_values_returns_the_first_and_sends_nothing(
    stores: StoreFactory,
) -> None:
    store = stores()
    control = RunControl(store)
    run_id = await control.submit(gated_flow())
    first = await control.signal(run_id, "gate", {"ok": {"a": 1, "b": [2]}})
    again = await RunControl(await _other(stores, store)).signal(run_id, "gate", {"ok": {"b": [2], "a": 1}})
    assert again == first
    assert await store.get_commands(run_id) == [first]


class _Outraced:
    """A store on which another client's signal to the same step lands just before each one sent here."""

    def __init__(self, store: Store, values: dict[str, Any]) -> None:
        self._store = store
        self._values = values

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def send_command(self, run_id: str, kind: CommandKind, **fields: Any) -> Command:
        await self._store.send_command(run_id, kind, at=time.time(), step_id=fields["step_id"], values=self._values)
        return await self._store.send_command(run_id, kind, **fields)


async def test_a_signal_that_loses_a_race_to_one_with_other_values_is_refused(stores: StoreFactory) -> None:
    store = stores()
    run_id = await RunControl(store).submit(gated_flow())
    outraced = RunControl(cast(Store, _Outraced(store, {"ok": "theirs"})))

    with pytest.raises(ControlError, match=r'command 1, sent .* with \{"ok":"theirs"\}'):
        await outraced.signal(run_id, "gate", {"ok": "mine"})
    assert [command.values for command in await store.get_commands(run_id)] == [{"ok": "theirs"}, {"ok": "mine"}]
    assert (await outraced.signal(run_id, "gate", {"ok": "theirs"})).seq == 1  # the one that counts


async def test_the_driver_completes_a_step_with_the_signal_that_counts(stores: StoreFactory) -> None:
    store = stores()
    async with Orchestrator(store, processes=1) as orchestrator:
        run_id = await orchestrator.start_run(gated_flow())
        await orchestrator.control.signal(run_id, "gate", {"ok": "first"})
        with pytest.raises(ControlError, match="already has a signal"):
            await orchestrator.control.signal(run_id, "gate", {"ok": "second"})
        assert (await orchestrator.control.wait_for_completion(run_id, timeout_s=30)).status == RunStatus.SUCCEEDED
    assert (await store.get_steps(run_id))[1].outputs == {"ok": "first"}


async def test_follow_logs_gives_the_logs_there_are_then_each_attempt_s_as_it_ends(stores: StoreFactory) -> None:
    store = stores()
    flow = parse_flow(
        {
            "name": "logged",
            "steps": [
                {"id": "first", "script": "log('first ran')"},
                {"id": "gate", "depends_on": ["first"], "wait_for": {"fields": ["ok"]}},
                {"id": "after", "depends_on": ["gate"], "script": "print('after ran', attempt)"},
            ],
        }
    )
    async with Orchestrator(store, processes=1) as orchestrator:
        run_id = await orchestrator.start_run(flow)
        await wait_until_waiting(orchestrator, run_id, "gate")
        reader = RunControl(await _other(stores, store))
        followed = reader.follow_logs(run_id)
        first = await anext(followed)  # there before the follow began
        after = reader.follow_logs(run_id, step_id="after")
        await orchestrator.control.signal(run_id, "gate", {"ok": True})
        rest = [log async for log in followed]  # ends with the run
        only_after = [log async for log in after]
    assert (first.step_id, first.attempt, first.text) == ("first", 1, "first ran\n")
    assert [(log.step_id, log.attempt, log.text) for log in rest] == [("after", 1, "after ran 1\n")]
    assert only_after == rest
