"""Controlling runs whose steps run on remote workers (Redis, WebSocket and HTTP workers in this process,
each with one sandbox process): cancel and fail-fast stop the step on its worker, pause lets it finish
and starts nothing new until resume, and `Orchestrator.executors.workers()` lists the live workers."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dagrun import Flow, MemoryStore, Orchestrator, RunStatus, StepStatus, parse_flow
from dagrun.contract.transport import WorkerStatus
from dagrun.engine.control import RunControl
from dagrun.store import RedisStore, Store
from dagrun.worker.script_worker import ScriptWorker
from tests.control_support import wait_for_event
from tests.executors.conftest import ONE_AT_A_TIME, SPIN, Gate, ServerFactory, WorkerFactory, no_step_running
from tests.executors.redis_support import RedisWorkers, eventually

QUICK = parse_flow({"name": "quick", "steps": [{"id": "a", "executor": "remote", "script": "outputs['v'] = 1"}]})


@pytest.fixture
def token() -> str:
    return "tok-" + secrets.token_hex(16)


@dataclass
class Factories:
    """Start workers: Redis ones (`redis`), and WebSocket or HTTP ones (`workers`, then `servers`)."""

    redis: RedisWorkers
    workers: WorkerFactory
    servers: ServerFactory


@pytest.fixture
async def factories(redis_url: str, tmp_path: Path, token: str) -> AsyncIterator[Factories]:
    made = Factories(RedisWorkers(redis_url, tmp_path, token), WorkerFactory(token), ServerFactory())
    try:
        yield made
    finally:
        await made.servers.stop_all()
        await made.workers.close_all()
        await made.redis.close_all()


@dataclass
class Remote:
    """A remote worker behind the executor URL `url`, and the stores a run on it uses."""

    url: str
    worker: ScriptWorker
    gate: Gate
    store: Store
    other: RunControl | None  # a second store on the same data, when there is one: another process

    def control(self, orchestrator: Orchestrator) -> RunControl:
        """What sends commands: another process when there is one, else the orchestrator driving the run."""
        return self.other or orchestrator.control


@pytest.fixture(
    params=[("redis", "memory"), ("redis", "redis"), ("ws", "memory"), ("http", "memory")],
    ids=["redis", "redis-store", "ws", "http"],
)
async def remote(request: pytest.FixtureRequest, factories: Factories, redis_url: str) -> AsyncIterator[Remote]:
    transport, store_kind = request.param
    gate = Gate()
    if transport == "redis":
        handle = await factories.redis.start(concurrency=1, functions=gate.functions())
        url, worker = factories.redis.url, handle.worker
    else:
        worker = await factories.workers(functions=gate.functions(), sandbox=ONE_AT_A_TIME)
        url = (await factories.servers(transport, worker)).url
    if store_kind == "redis":
        async with RedisStore.from_url(redis_url) as store, RedisStore.from_url(redis_url) as other:
            yield Remote(url, worker, gate, store, RunControl(other))
    else:
        yield Remote(url, worker, gate, MemoryStore(), None)


def remote_flow(name: str, *steps: dict[str, Any]) -> Flow:
    return parse_flow({"name": name, "defaults": {"executor": "remote", "timeout_s": 60}, "steps": list(steps)})


async def _steps(store: Store, run_id: str) -> dict[str, tuple[StepStatus, int]]:
    """Each step's status and how many attempts it started."""
    return {step.step_id: (step.status, step.attempt) for step in await store.get_steps(run_id)}


async def test_cancel_stops_the_running_remote_step_and_runs_nothing_after_it(remote: Remote, token: str) -> None:
    flow = remote_flow(
        "remote-cancel",
        {"id": "spin", "script": SPIN},
        {"id": "after", "depends_on": ["spin"], "script": "outputs['v'] = 1"},
        {"id": "last", "depends_on": ["after"], "script": "outputs['v'] = 2"},
    )
    async with Orchestrator(remote.store, executors={"remote": remote.url}, token=token) as orchestrator:
        run_id = await orchestrator.start_run(flow)
        await remote.gate.started.wait()
        assert remote.worker.status().current == (f"{run_id}/spin#1",)

        started = time.monotonic()
        await remote.control(orchestrator).cancel(run_id)
        run = await orchestrator.control.wait_for_completion(run_id, timeout_s=30)
        await no_step_running(remote.worker)
        assert time.monotonic() - started < 10
        # the worker's one sandbox process is free again: another run's step runs at once
        quick = await asyncio.wait_for(orchestrator.run(QUICK), 10)

    assert run.status == RunStatus.CANCELLED
    assert await _steps(remote.store, run_id) == {
        "spin": (StepStatus.CANCELLED, 1),
        "after": (StepStatus.CANCELLED, 0),  # never started
        "last": (StepStatus.CANCELLED, 0),
    }
    assert quick.status == RunStatus.SUCCEEDED
    status = remote.worker.status()
    assert (status.steps_done, status.errors, status.current) == (1, 0, ())  # the cancelled step did not count


async def test_fail_fast_stops_the_remote_step_running_beside_the_failure(remote: Remote, token: str) -> None:
    async def after_spin_started() -> None:
        await remote.gate.started.wait()

    flow = remote_flow(
        "remote-fail-fast",
        {"id": "spin", "script": SPIN},
        {"id": "boom", "executor": "local", "script": "after_spin_started()\nfail('boom')"},
    )
    async with Orchestrator(
        remote.store,
        executors={"remote": remote.url},
        functions={"after_spin_started": after_spin_started},
        processes=1,
        token=token,
        fail_fast=True,
    ) as orchestrator:
        result = await asyncio.wait_for(orchestrator.run(flow), 30)
        await no_step_running(remote.worker)

    assert result.status == RunStatus.FAILED
    assert result.steps["boom"].status == StepStatus.FAILED
    assert result.steps["spin"].status == StepStatus.CANCELLED
    assert remote.worker.status().steps_done == 0


async def test_pause_lets_the_remote_step_finish_and_starts_nothing_until_resume(remote: Remote, token: str) -> None:
    flow = remote_flow(
        "remote-pause",
        {"id": "held", "script": "outputs['v'] = wait_release()"},
        {"id": "next", "depends_on": ["held"], "script": "outputs['v'] = inputs['x'] + '!'",
         "inputs": {"x": "${steps.held.v}"}},
    )  # fmt: skip
    store = remote.store
    async with Orchestrator(store, executors={"remote": remote.url}, token=token) as orchestrator:
        run_id = await orchestrator.start_run(flow)
        await remote.gate.started.wait()
        await remote.control(orchestrator).pause(run_id)
        await wait_for_event(store, run_id, "paused")

        remote.gate.release.set()  # the running step finishes ...
        await wait_for_event(store, run_id, "succeeded", "held")
        await asyncio.sleep(0.3)  # ... and nothing starts (no event to wait for: this checks an absence)
        assert (await _steps(store, run_id))["next"] == (StepStatus.PENDING, 0)
        assert (await store.get_run(run_id)).status == RunStatus.PAUSED
        assert remote.worker.status().steps_done == 1

        await remote.control(orchestrator).resume(run_id)
        run = await orchestrator.control.wait_for_completion(run_id, timeout_s=30)

    assert run.status == RunStatus.SUCCEEDED
    steps = {step.step_id: step for step in await store.get_steps(run_id)}
    assert (steps["held"].attempt, steps["held"].outputs) == (1, {"v": "released"})  # finished, not run again
    assert steps["next"].outputs == {"v": "released!"}
    assert [event.status for event in await store.get_events(run_id) if event.kind == "run"] == [
        "running",
        "paused",
        "running",
        "succeeded",
    ]
    assert remote.worker.status().steps_done == 2


async def test_workers_lists_the_live_workers_of_each_remote_executor(factories: Factories, token: str) -> None:
    queue = f"{factories.redis.url}&heartbeat_s=0.2&heartbeat_ttl_s=2"  # statuses are as fresh as heartbeats
    gate = Gate()
    await factories.redis.start(url=queue, worker_id="r-busy", contexts=("eu",), functions=gate.functions())
    idle = await factories.redis.start(url=queue, worker_id="r-idle", concurrency=1)
    http_server = await factories.servers("http", await factories.workers(worker_id="h-1"))
    ws_server = await factories.servers("ws", await factories.workers(worker_id="ws-1"))
    executors = {"queue": queue, "http": http_server.url, "ws": ws_server.url}
    flow = parse_flow(
        {
            "name": "listed",
            "defaults": {"executor": "queue"},
            "steps": [
                {"id": "bad", "script": "fail('no')"},
                {"id": "held", "context_id": "eu", "script": "outputs['v'] = wait_release()"},
            ],
        }
    )
    async with Orchestrator(MemoryStore(), executors=executors, token=token) as orchestrator:
        run_id = await orchestrator.start_run(flow)
        await gate.started.wait()
        await wait_for_event(orchestrator.store, run_id, "failed", "bad")

        async def listed() -> dict[str, list[WorkerStatus]]:
            return await orchestrator.executors.workers()

        async def busy_and_failed_shown() -> bool:
            queued = {status.worker_id: status for status in (await listed())["queue"]}
            return queued["r-busy"].current == (f"{run_id}/held#1",) and queued["r-idle"].errors == 1

        await eventually(busy_and_failed_shown, timeout_s=10, what="the heartbeats show the steps")
        found = await listed()
        assert sorted(found) == ["http", "queue", "ws"]  # remote executors only, not `local`
        busy, failed = found["queue"]
        assert (busy.worker_id, busy.contexts, busy.steps_done, busy.errors) == ("r-busy", ("eu",), 0, 0)
        assert (failed.worker_id, failed.contexts, failed.current) == ("r-idle", ("default",), ())
        assert (failed.steps_done, failed.errors) == (1, 1)
        assert busy.host == socket.gethostname() and time.time() - busy.heartbeat_at < 5
        [http_status] = found["http"]
        assert (http_status.worker_id, http_status.contexts, http_status.steps_done) == ("h-1", ("default",), 0)
        [ws_status] = found["ws"]  # from the WebSocket worker's GET /health
        assert (ws_status.worker_id, ws_status.contexts, ws_status.current) == ("ws-1", ("default",), ())

        gate.release.set()
        assert (await orchestrator.control.wait_for_completion(run_id, timeout_s=30)).status == RunStatus.FAILED
        await idle.aclose()  # a stopped worker deletes its heartbeat: it is gone from the list at once
        await http_server.aclose()  # an HTTP worker that is down cannot say anything: none listed
        found = await listed()
        assert [status.worker_id for status in found["queue"]] == ["r-busy"]
        assert found["http"] == []

        async def held_step_counted() -> bool:
            return [status.steps_done for status in (await listed())["queue"]] == [1]

        await eventually(held_step_counted, timeout_s=10, what="the next heartbeat counts the step")


async def test_a_mapped_step_runs_its_instances_on_remote_workers(remote: Remote, token: str) -> None:
    flow = remote_flow(
        "remote-map",
        {"id": "list", "script": "outputs['xs'] = [3, 1, 2]", "outputs": ["xs"]},
        {"id": "each", "depends_on": ["list"], "map": {"over": "${steps.list.xs}", "as": "x"},
         "script": "outputs['y'] = inputs['x'] * 10", "outputs": ["y"]},
        {"id": "sum", "depends_on": ["each"], "script": "outputs['s'] = sum(inputs['ys'])",
         "inputs": {"ys": "${steps.each.y}"}},
    )  # fmt: skip
    async with Orchestrator(remote.store, executors={"remote": remote.url}, token=token) as orchestrator:
        result = await orchestrator.run(flow)

    assert result.status == RunStatus.SUCCEEDED
    assert result.steps["each"].outputs == {"y": [30, 10, 20]}
    assert result.steps["sum"].outputs == {"s": 60}
    steps = await _steps(remote.store, result.run_id)
    assert {step_id: steps[step_id] for step_id in ("each[0]", "each[1]", "each[2]")} == {
        f"each[{i}]": (StepStatus.SUCCEEDED, 1) for i in range(3)
    }
    assert remote.worker.status().steps_done == 5  # list, three instances, sum
