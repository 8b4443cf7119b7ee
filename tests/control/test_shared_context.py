"""Acceptance: parallel branches on two remote workers never lose each other's context writes.

The classic parallel example: initial (+1, log) -> split (+1, log) -> two branches (+10 and +15, each
logs). Every run must end with counter 27 and all four log lines, through the Redis executor and the
Redis store, run after run.
"""

from __future__ import annotations

from dagrun import Orchestrator, RunStatus, parse_flow
from dagrun.store import RedisStore
from tests.executors.redis_support import RedisWorkers

RUNS = 50

PARALLEL = {
    "name": "parallel-context",
    "defaults": {"executor": "remote"},
    "steps": [
        {"id": "initial", "script": "context.incr('counter', 1)\ncontext.append('log', 'initial')"},
        {"id": "split", "depends_on": ["initial"],
         "script": "context.incr('counter', 1)\ncontext.append('log', 'split')"},
        {"id": "left", "depends_on": ["split"],
         "script": "context.incr('counter', 10)\ncontext.append('log', 'left +10')"},
        {"id": "right", "depends_on": ["split"],
         "script": "context.incr('counter', 15)\ncontext.append('log', 'right +15')"},
    ],
}  # fmt: skip


async def test_parallel_branches_on_two_workers_merge_their_context_every_time(
    redis_workers: RedisWorkers, redis_url: str
) -> None:
    first = await redis_workers.start(concurrency=1)
    second = await redis_workers.start(concurrency=1)
    flow = parse_flow(PARALLEL)
    async with (
        RedisStore.from_url(redis_url) as store,
        Orchestrator(store, executors={"remote": redis_workers.url}, token=redis_workers.token) as orchestrator,
    ):
        for _ in range(RUNS):
            result = await orchestrator.run(flow)
            assert result.status == RunStatus.SUCCEEDED
            context = await store.get_context(result.run_id)
            assert context["counter"] == 27
            assert context["log"][:2] == ["initial", "split"]
            assert sorted(context["log"][2:]) == ["left +10", "right +15"]
            assert result.context == context
    # both workers took part, so the branches really ran apart
    assert first.worker.status().steps_done > 0 and second.worker.status().steps_done > 0
    assert first.worker.status().steps_done + second.worker.status().steps_done == 4 * RUNS
