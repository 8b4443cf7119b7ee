"""Faults of the Redis transport: a worker killed mid-step, a step longer than the visibility timeout,
Redis restarting mid-run, Redis dropping every connection mid-run. Every run ends with exactly one
completion per step."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from dagrun import MemoryStore, RunStatus
from executors.redis_queue import list_workers
from tests.conftest import RedisServers
from tests.executors.redis_support import RedisWorkers, busy_step, eventually, redis_client, remote_flow, run_remote

pytestmark = pytest.mark.slow

CHAIN_SCRIPT = """
import datetime
end = datetime.datetime.now() + datetime.timedelta(seconds=0.05)
while datetime.datetime.now() < end:
    pass
outputs['v'] = 1 + sum(inputs.values())
"""


async def completions(store: MemoryStore, run_id: str) -> Counter[str]:
    """How many times each step ended (succeeded, failed, skipped or cancelled) in the run's event log."""
    ended = {"succeeded", "failed", "skipped", "cancelled"}
    events = await store.get_events(run_id)
    return Counter(event.step_id or "" for event in events if event.kind == "step" and event.status in ended)


def chain(length: int) -> list[dict[str, object]]:
    steps: list[dict[str, object]] = [{"id": "c0", "script": CHAIN_SCRIPT}]
    steps += [
        {"id": f"c{i}", "depends_on": [f"c{i - 1}"], "script": CHAIN_SCRIPT, "inputs": {"v": f"${{steps.c{i - 1}.v}}"}}
        for i in range(1, length)
    ]
    return steps


@pytest.mark.timeout(90)
async def test_the_step_of_a_killed_worker_runs_again_on_a_live_one(redis_workers: RedisWorkers) -> None:
    doomed = redis_workers.spawn(concurrency=1, worker_id="doomed")
    await redis_workers.wait_ready("doomed")
    flow = remote_flow(busy_step("long", 2.0), {"id": "after", "depends_on": ["long"], "script": "pass"})
    running = asyncio.create_task(run_remote(redis_workers.url, flow))

    async def doomed_runs_it() -> bool:
        statuses = await list_workers(redis_workers.url)
        return any(status.worker_id == "doomed" and "/long#1" in " ".join(status.current) for status in statuses)

    await eventually(doomed_runs_it, timeout_s=30, what="the doomed worker runs the long step")
    survivor = await redis_workers.start(concurrency=1, worker_id="survivor")
    doomed.kill(signal.SIGKILL)
    killed_at = time.monotonic()

    async def survivor_runs_it() -> bool:
        return any("/long#1" in current for current in survivor.worker.status().current)

    await eventually(survivor_runs_it, timeout_s=15, what="a live worker runs the step again")
    assert time.monotonic() - killed_at < 10
    result, store = await asyncio.wait_for(running, timeout=30)
    assert result.status == RunStatus.SUCCEEDED
    assert result.steps["long"].attempts == 1  # the same attempt, delivered again
    assert await completions(store, result.run_id) == {"long": 1, "after": 1}


@pytest.mark.timeout(60)
async def test_a_long_step_on_a_live_worker_is_never_taken_from_it(redis_workers: RedisWorkers) -> None:
    url = f"{redis_workers.url}&visibility_timeout_s=1&heartbeat_s=0.2&heartbeat_ttl_s=1"
    first = await redis_workers.start(concurrency=1, url=url)
    second = await redis_workers.start(concurrency=1, url=url)
    result, store = await run_remote(url, remote_flow(busy_step("long", 3.0)))
    assert result.status == RunStatus.SUCCEEDED
    await asyncio.sleep(1.0)  # a second run, had there been one, would be under way by now
    statuses = [first.worker.status(), second.worker.status()]
    assert sum(status.steps_done for status in statuses) == 1
    assert all(status.current == () for status in statuses)
    assert await completions(store, result.run_id) == {"long": 1}


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("appendonly", "how"),
    [(True, signal.SIGTERM), (False, signal.SIGKILL)],
    ids=["appendonly-restart", "data-lost-kill"],
)
async def test_a_run_survives_a_redis_restart(
    redis_servers: RedisServers, tmp_path: Path, appendonly: bool, how: signal.Signals
) -> None:
    server = redis_servers(appendonly=appendonly)
    url = f"{server.url}?prefix=restart:&heartbeat_s=0.5&heartbeat_ttl_s=2"
    factory = RedisWorkers(url, tmp_path)
    try:
        await factory.start(concurrency=2)
        steps = chain(24)
        running = asyncio.create_task(run_remote(url, remote_flow(*steps)))
        await asyncio.sleep(0.8)
        assert not running.done()
        await asyncio.to_thread(server.restart, how)
        result, store = await asyncio.wait_for(running, timeout=60)
    finally:
        await factory.close_all()
    assert result.status == RunStatus.SUCCEEDED
    assert result.steps["c23"].outputs == {"v": 24}
    assert await completions(store, result.run_id) == {f"c{i}": 1 for i in range(24)}


@pytest.mark.timeout(60)
async def test_a_run_survives_redis_dropping_every_connection(redis_servers: RedisServers, tmp_path: Path) -> None:
    """The caller's and the worker's own connections (blocking reads, XADDs, reply scripts) reconnect."""
    server = redis_servers()
    url = f"{server.url}?prefix=drop:"
    factory = RedisWorkers(url, tmp_path)
    admin = redis_client(url)
    try:
        await factory.start(concurrency=2)
        running = asyncio.create_task(run_remote(url, remote_flow(*chain(40))))
        for _ in range(3):
            await asyncio.sleep(0.3)
            assert not running.done()
            assert await admin.client_kill_filter(_type="normal", skipme=True) >= 4
        result, store = await asyncio.wait_for(running, timeout=30)
    finally:
        await admin.aclose()
        await factory.close_all()
    assert result.status == RunStatus.SUCCEEDED
    assert result.steps["c39"].outputs == {"v": 40}
    assert await completions(store, result.run_id) == {f"c{i}": 1 for i in range(40)}
