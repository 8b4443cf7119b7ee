"""A call that is cancelled stops its step on a WebSocket or HTTP worker (Redis: test_redis_queue.py).

Over WebSocket the client sends a cancel frame for the request's id; over HTTP it closes the connection and
the server cancels the request's handler. Either way the worker kills the sandbox process running the
script, replaces it, logs the cancel and holds nothing any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from dagrun.contract.executor import ExecutorOptions
from dagrun.contract.transport import open_executor
from tests.executors.conftest import (
    ONE_AT_A_TIME,
    SPIN,
    Gate,
    ServerFactory,
    WorkerFactory,
    make_request,
    no_step_running,
)

DOUBLE = "outputs['v'] = inputs['x'] * 2"


@pytest.mark.parametrize("kind", ["ws", "http"])
async def test_a_cancelled_call_stops_its_step_on_the_worker(
    kind: str,
    workers: WorkerFactory,
    servers: ServerFactory,
    options: ExecutorOptions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    gate = Gate()
    worker = await workers(functions=gate.functions(), sandbox=ONE_AT_A_TIME)  # one process, one step at once
    server = await servers(kind, worker)
    async with contextlib.aclosing(open_executor(server.url, options)) as executor:
        first = await executor.call(make_request(DOUBLE, inputs={"x": 1}))
        calling = asyncio.ensure_future(executor.call(make_request(SPIN, step_id="spin", timeout_s=60)))
        await gate.started.wait()

        calling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await calling
        await no_step_running(worker)
        after = await asyncio.wait_for(executor.call(make_request(DOUBLE, inputs={"x": 2})), 10)

    assert after.outputs == {"v": 4} and after.worker_id != first.worker_id  # the spinning process was replaced
    assert "run run-1 step spin attempt 1 cancelled after" in caplog.text
    status = worker.status()
    assert (status.steps_done, status.errors) == (2, 0)
    started = time.monotonic()
    await server.aclose()  # nothing is held any more: no wait for the 5 s grace period
    assert time.monotonic() - started < 2
