"""Pause on a Redis queue, against a real redis-server and real workers: steps still in the stream are
taken back unrun, steps a worker took finish, the status says which are queued and which run, and a take
back racing a worker's read runs the step once or not at all."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from dagrun import Orchestrator, RunStatus, StepStatus, parse_flow
from dagrun.contract.executor import Dispatch, StepRequest, StepResult, Withdrawn, script_hash
from dagrun.store import MemoryStore
from dagrun.store.base import Store
from executors.redis_queue import QueueSettings, RedisExecutor
from tests.executors.redis_support import OPTIONS, TOKEN, RedisWorkers

STEPS = 17  # as the operator's run in issue 17: 2 workers with one sandbox process each


class Holds:
    """Host functions of the workers: `hold(n)` returns n once released, and counts the steps that ran."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.ran: Counter[int] = Counter()

    async def hold(self, n: int) -> int:
        self.ran[n] += 1
        await self.released.wait()
        return n


async def count(store: Store, run_id: str) -> Counter[StepStatus]:
    return Counter(step.status for step in await store.get_steps(run_id))


async def test_pause_takes_back_what_no_worker_took_and_resume_completes_the_run(redis_workers: RedisWorkers) -> None:
    holds = Holds()
    for _ in range(2):
        await redis_workers.start(concurrency=1, functions={"hold": holds.hold})
    steps = [{"id": f"s{n}", "script": f"outputs['n'] = hold({n})"} for n in range(STEPS)]
    flow = parse_flow({"name": "seventeen", "defaults": {"executor": "remote"}, "steps": steps})
    store = MemoryStore()
    async with Orchestrator(store, executors={"remote": redis_workers.url}, token=TOKEN) as orchestrator:
        run_id = await orchestrator.start_run(flow)
        async with asyncio.timeout(30):
            while (await count(store, run_id))[StepStatus.RUNNING] < 2:  # the workers' started notices
                await asyncio.sleep(0.05)
        assert await count(store, run_id) == {StepStatus.RUNNING: 2, StepStatus.QUEUED: STEPS - 2}

        await orchestrator.control.pause(run_id)
        async with asyncio.timeout(30):
            while (await count(store, run_id))[StepStatus.PENDING] < STEPS - 2:
                await asyncio.sleep(0.05)
        assert await count(store, run_id) == {StepStatus.RUNNING: 2, StepStatus.PENDING: STEPS - 2}
        holds.released.set()  # the two steps the workers took finish ...
        await asyncio.sleep(1.0)  # ... and nothing starts while paused (an absence: no event to wait for)
        assert await count(store, run_id) == {StepStatus.SUCCEEDED: 2, StepStatus.PENDING: STEPS - 2}
        assert sum(holds.ran.values()) == 2

        await orchestrator.control.resume(run_id)
        run = await orchestrator.control.wait_for_completion(run_id, timeout_s=60)

    assert run.status == RunStatus.SUCCEEDED
    records = await store.get_steps(run_id)
    assert {record.step_id: (record.outputs, record.attempt) for record in records} == {
        f"s{n}": ({"n": n}, 1) for n in range(STEPS)
    }
    assert holds.ran == Counter(range(STEPS))  # every step ran once


def request(n: int) -> StepRequest:
    script = f"outputs['n'] = hold({n})"
    return StepRequest("run-1", f"s{n}", 1, script, script_hash(script), {}, {})


async def test_a_take_back_racing_a_worker_runs_the_step_once_or_not_at_all(redis_workers: RedisWorkers) -> None:
    """A busy worker frees up while every queued request is taken back, each at a random moment: some it
    reads first (they run, once, and answer), the others are gone before it reads them (never run)."""
    holds = Holds()
    await redis_workers.start(concurrency=1, functions={"hold": holds.hold})
    executor = RedisExecutor(QueueSettings.from_url(redis_workers.url), OPTIONS)
    rounds = 40
    try:
        first = asyncio.ensure_future(executor.call(request(-1)))
        async with asyncio.timeout(30):
            while not holds.ran:  # the worker is busy with it
                await asyncio.sleep(0.01)
        dispatches = [Dispatch() for _ in range(rounds)]
        calls = [asyncio.ensure_future(executor.call(request(n), dispatches[n])) for n in range(rounds)]
        await asyncio.sleep(0.2)  # all written to the stream

        async def take_back_later(dispatch: Dispatch) -> None:
            await asyncio.sleep(random.uniform(0, 0.05))
            dispatch.withdraw()

        holds.released.set()
        await asyncio.gather(*(take_back_later(dispatch) for dispatch in dispatches))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert (await first).ok
    finally:
        await executor.aclose()

    del holds.ran[-1]
    results = {n: outcome for n, outcome in enumerate(outcomes) if isinstance(outcome, StepResult)}
    withdrawn = {n for n, outcome in enumerate(outcomes) if isinstance(outcome, Withdrawn)}
    answered = set(results)
    assert answered | withdrawn == set(range(rounds))
    assert all(result.ok and result.outputs == {"n": n} for n, result in results.items())
    assert holds.ran == Counter(answered)  # those answered ran once; those taken back never ran
    assert answered and withdrawn, "the race was not run: every request went one way"
