"""Pause holds steps that wait in a queue: they go back to pending unrun, and only resume starts them.

A step is `queued` from its dispatch until a sandbox process starts it, then `running`. Here one
sandbox process runs one step at a time (`pipeline_depth=1`), so while the first step holds it, the
others wait in the pool's queue: a pause must take them back.
"""

from __future__ import annotations

import asyncio

import pytest

from dagrun import Orchestrator, RunStatus, StepStatus, parse_flow
from dagrun.contract.dispatch import Dispatch, Withdrawn
from dagrun.contract.executor import ErrorKind, StepRequest, StepResult
from dagrun.engine.step_runner import WITHDRAWN
from dagrun.store import MemoryStore
from dagrun.store.base import Store
from tests.control_support import Holds, assert_each_held_step_ran_once, held_flow, wait_for_event

STEPS = 5
ONE_AT_A_TIME = "local://?processes=1&pipeline_depth=1"


async def statuses(store: Store, run_id: str) -> dict[str, StepStatus]:
    return {step.step_id: step.status for step in await store.get_steps(run_id)}


@pytest.mark.parametrize("executor", [ONE_AT_A_TIME, "inline://?processes=1&pipeline_depth=1"])
async def test_pause_takes_queued_steps_back_and_resume_runs_them(executor: str) -> None:
    store, holds = MemoryStore(), Holds()
    functions = {"hold": holds.hold}
    async with Orchestrator(store, executors={"local": executor}, functions=functions) as orchestrator:
        run_id = await orchestrator.start_run(held_flow(STEPS))
        await wait_for_event(store, run_id, "running", "s0")
        before = await statuses(store, run_id)
        assert before["s0"] == StepStatus.RUNNING
        assert [before[f"s{n}"] for n in range(1, STEPS)] == [StepStatus.QUEUED] * (STEPS - 1)

        await orchestrator.control.pause(run_id)
        for n in range(1, STEPS):
            await wait_for_event(store, run_id, "pending", f"s{n}")
        paused = await statuses(store, run_id)
        assert paused == {"s0": StepStatus.RUNNING} | {f"s{n}": StepStatus.PENDING for n in range(1, STEPS)}
        holds.released.set()  # the step a sandbox process had runs to its end ...
        await wait_for_event(store, run_id, "succeeded", "s0")
        await asyncio.sleep(0.3)
        assert holds.ran == {0: 1}  # ... and nothing else starts while paused
        assert (await statuses(store, run_id))["s1"] == StepStatus.PENDING

        await orchestrator.control.resume(run_id)
        run = await orchestrator.control.wait_for_completion(run_id, timeout_s=30)

    await assert_each_held_step_ran_once(store, run, holds, STEPS)
    withdrawn = [e for e in await store.get_events(run_id) if e.status == "pending"]
    assert sorted(e.step_id or "" for e in withdrawn) == [f"s{n}" for n in range(1, STEPS)]
    assert {(e.attempt, e.message) for e in withdrawn} == {(0, WITHDRAWN)}


async def test_a_step_records_when_it_was_queued_and_when_it_started() -> None:
    store, holds = MemoryStore(), Holds()
    async with Orchestrator(store, executors={"local": ONE_AT_A_TIME}, functions={"hold": holds.hold}) as orchestrator:
        run_id = await orchestrator.start_run(held_flow(2))
        await wait_for_event(store, run_id, "running", "s0")
        await asyncio.sleep(0.2)  # s1 waits behind s0 all this time
        holds.released.set()
        await orchestrator.control.wait_for_completion(run_id, timeout_s=30)
        metrics = {step.step_id: step for step in (await orchestrator.control.metrics(run_id)).steps}
        pending = await orchestrator.control.pending_work(run_id)

    s1 = next(step for step in await store.get_steps(run_id) if step.step_id == "s1")
    assert s1.queued_at is not None and s1.started_at is not None and s1.finished_at is not None
    assert s1.queued_at <= s1.started_at <= s1.finished_at
    wait = metrics["s1"].queue_wait_s
    assert wait is not None and 0.2 <= wait == pytest.approx(s1.started_at - s1.queued_at)
    assert pending == []


class FailsOnceThenQueues:
    """An executor whose first call fails and whose later calls wait in its queue (withdrawable) until
    released, then succeed."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.calls = 0

    async def call(self, request: StepRequest, dispatch: Dispatch | None = None) -> StepResult:
        self.calls += 1
        if self.calls == 1:
            return StepResult.failure(ErrorKind.FAIL, "StepFailed", "not yet")
        assert dispatch is not None
        withdrawn = asyncio.Event()
        dispatch.offer_withdrawal(withdrawn.set)
        released = asyncio.ensure_future(self.released.wait())
        await asyncio.wait([released, asyncio.ensure_future(withdrawn.wait())], return_when=asyncio.FIRST_COMPLETED)
        if not released.done():
            released.cancel()
            raise Withdrawn
        dispatch.started()
        return StepResult(ok=True, outputs={"attempt": request.attempt})

    async def aclose(self) -> None:
        pass


async def test_a_retry_taken_back_by_a_pause_waits_ready_and_keeps_its_failures() -> None:
    store, executor = MemoryStore(), FailsOnceThenQueues()
    flow = parse_flow({"name": "retry", "steps": [{"id": "s", "script": "pass", "retries": {"max_attempts": 2}}]})
    async with Orchestrator(store, executors={"local": executor}) as orchestrator:
        run_id = await orchestrator.start_run(flow)

        async def events() -> list[tuple[str, int, str]]:
            return [(e.status, e.attempt, e.message) for e in await store.get_events(run_id) if e.step_id == "s"]

        async with asyncio.timeout(30):
            while ("queued", 2, "") not in await events():  # the first attempt failed; its retry is queued
                await asyncio.sleep(0.01)
            await orchestrator.control.pause(run_id)
            while (await events())[-1][0] == "queued":
                await asyncio.sleep(0.01)
        assert (await events())[-1] == ("ready", 1, WITHDRAWN)  # the retry is back, its failure kept
        executor.released.set()
        await orchestrator.control.resume(run_id)
        run = await orchestrator.control.wait_for_completion(run_id, timeout_s=30)
    assert run.status == RunStatus.SUCCEEDED
    step = (await store.get_steps(run_id))[0]
    assert (step.attempt, step.outputs) == (2, {"attempt": 2})  # the retry is attempt 2, as if never taken back
