"""Taking a step back from a Redis queue, against a real redis-server and a real worker: a take-back
racing a worker's read runs the step once or not at all. (Pause over Redis as a whole:
tests/control/test_remote_pause.py.)"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from dagrun.contract.dispatch import Dispatch, Withdrawn
from dagrun.contract.executor import StepRequest, StepResult, script_hash
from executors.redis_queue import QueueSettings, RedisExecutor
from tests.control_support import Holds
from tests.executors.redis_support import OPTIONS, RedisWorkers

STEPS = 17  # as the operator's run in issue 17: 2 workers with one sandbox process each


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
