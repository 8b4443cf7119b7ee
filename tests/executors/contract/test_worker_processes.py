"""`dagrun worker KIND` on every remote transport: it serves steps and exits 0 on SIGTERM, and a worker
that cannot serve (no token, a port in use) exits with one clear line, never a traceback."""

from __future__ import annotations

import asyncio
import re
import signal
import socket

import pytest

from tests.executors.contract.conftest import Executors, needs
from tests.executors.contract.steps import DOUBLE, make_request
from tests.executors.contract.targets import TOKEN, Capability, RemoteTarget, Target

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow, needs(Capability.SERVER)]


async def test_a_worker_process_serves_steps_and_exits_0_on_sigterm(executors: Executors, target: Target) -> None:
    assert isinstance(target, RemoteTarget)
    place = target.new_place()
    worker = await target.spawn(place)
    result = await executors.at(place).call(make_request(DOUBLE, inputs={"x": 5}, run_id="r-cli", step_id="s-cli"))

    worker.kill(signal.SIGTERM)
    code = await asyncio.to_thread(worker.wait)
    log = worker.log_text()

    assert result.outputs == {"v": 10}
    assert code == 0, log
    assert "run r-cli step s-cli attempt 1 succeeded" in log
    assert f"worker {worker.worker_id} stopped" in log
    assert TOKEN not in log


async def test_a_worker_process_without_a_token_exits_with_a_clear_message(target: Target) -> None:
    assert isinstance(target, RemoteTarget)
    worker = target.launch(target.new_place())
    code = await asyncio.to_thread(worker.wait)
    log = worker.log_text()
    assert code != 0
    assert re.search(r"needs (a|the workers') shared token", log) and "--token-file" in log
    assert "Traceback" not in log


@needs(Capability.LISTENS)
async def test_a_worker_process_on_a_port_in_use_exits_with_a_clear_message(target: Target) -> None:
    assert isinstance(target, RemoteTarget)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = target.launch(f"{target.scheme}://127.0.0.1:{port}", "--token-file", str(target.token_file))
        code = await asyncio.to_thread(worker.wait)
    log = worker.log_text()
    assert code != 0
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in log
    assert "Traceback" not in log
