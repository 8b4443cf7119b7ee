"""Pause on remote queues, as an operator sees it (issue 17): a run of 17 independent steps on two
worker slots, paused once two steps run. Steps still queued are taken back unrun (`pending`), the two a
worker runs finish, `status` never shows more steps running than there are slots, and resume completes
the run with every step run once. Over Redis (two workers with one sandbox process each), WebSocket and
HTTP (one worker with two)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dagrun import MemoryStore, Orchestrator, StepStatus
from dagrun.store.base import Store
from tests.control_support import Holds, assert_each_held_step_ran_once, held_flow
from tests.executors.conftest import SANDBOX, ServerFactory, WorkerFactory
from tests.executors.redis_support import RedisWorkers

STEPS = 17
SLOTS = 2


@pytest.fixture
def token() -> str:
    return "tok-" + secrets.token_hex(16)


@pytest.fixture(params=["redis", "ws", "http"])
async def remote(
    request: pytest.FixtureRequest, redis_url: str, tmp_path: Path, token: str
) -> AsyncIterator[tuple[str, Holds]]:
    """The executor URL of SLOTS worker slots serving `hold`, and the Holds behind them."""
    holds = Holds()
    functions = {"hold": holds.hold}
    if request.param == "redis":
        redis_workers = RedisWorkers(redis_url, tmp_path, token)
        try:
            for _ in range(SLOTS):
                await redis_workers.start(concurrency=1, functions=functions)
            yield redis_url, holds
        finally:
            await redis_workers.close_all()
        return
    workers, servers = WorkerFactory(token), ServerFactory()
    try:
        sandbox = dataclasses.replace(SANDBOX, processes=SLOTS, pipeline_depth=1)
        worker = await workers(functions=functions, concurrency=SLOTS, sandbox=sandbox)
        yield (await servers(request.param, worker)).url, holds
    finally:
        await servers.stop_all()
        await workers.close_all()


async def count(store: Store, run_id: str) -> Counter[StepStatus]:
    return Counter(step.status for step in await store.get_steps(run_id))


async def until(store: Store, run_id: str, status: StepStatus, number: int) -> None:
    """Until `number` steps are `status`; never more than SLOTS running meanwhile."""
    async with asyncio.timeout(30):
        while (counted := await count(store, run_id))[status] < number:
            assert counted[StepStatus.RUNNING] <= SLOTS, counted
            await asyncio.sleep(0.02)


async def test_pause_holds_on_a_remote_queue(remote: tuple[str, Holds], token: str) -> None:
    url, holds = remote
    flow = held_flow(STEPS, executor="remote")
    store = MemoryStore()
    async with Orchestrator(store, executors={"remote": url}, token=token) as orchestrator:
        run_id = await orchestrator.start_run(flow)
        await until(store, run_id, StepStatus.RUNNING, SLOTS)  # the workers said so
        assert await count(store, run_id) == {StepStatus.RUNNING: SLOTS, StepStatus.QUEUED: STEPS - SLOTS}

        await orchestrator.control.pause(run_id)
        await until(store, run_id, StepStatus.PENDING, STEPS - SLOTS)
        assert await count(store, run_id) == {StepStatus.RUNNING: SLOTS, StepStatus.PENDING: STEPS - SLOTS}
        holds.released.set()  # the steps the workers run finish ...
        await until(store, run_id, StepStatus.SUCCEEDED, SLOTS)
        await asyncio.sleep(1.0)  # ... and nothing starts while paused (an absence: no event to wait for)
        assert await count(store, run_id) == {StepStatus.SUCCEEDED: SLOTS, StepStatus.PENDING: STEPS - SLOTS}
        assert sum(holds.ran.values()) == SLOTS

        await orchestrator.control.resume(run_id)
        run = await orchestrator.control.wait_for_completion(run_id, timeout_s=60)

    await assert_each_held_step_ran_once(store, run, holds, STEPS)
