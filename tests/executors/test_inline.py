"""What only the inline transport does: its URL, its refusals as a transport without workers of its own,
and its lifecycle. Its calls are the executor contract's (tests/executors/contract/, target ``inline``)."""

from __future__ import annotations

import asyncio
import importlib
import tomllib
from pathlib import Path

import pytest

from dagrun.contract.executor import ErrorKind, ExecutorOptions
from dagrun.errors import ExecutorError
from dagrun.sandbox import SandboxSettings
from dagrun.worker.script_worker import ScriptWorker, WorkerSettings
from executors.inline import InlineExecutor, transport
from tests.executors.conftest import make_request

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
DOUBLE = "outputs['v'] = inputs['x'] * 2"


def test_the_inline_scheme_is_registered_as_an_entry_point() -> None:
    registered = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"]["dagrun.executors"]
    module, _, name = registered["inline"].partition(":")
    assert getattr(importlib.import_module(module), name) is transport


async def test_the_url_sets_the_workers_sandbox_and_the_options_its_host_functions() -> None:
    options = ExecutorOptions(functions={"triple": lambda n: 3 * n})
    async with transport.open_executor("inline://?processes=1&memory_mb=256", options) as executor:
        result = await executor.call(make_request("outputs['v'] = triple(inputs['x'])", inputs={"x": 2}))
        settings = executor.worker.settings
    assert result.outputs == {"v": 6}
    assert (settings.concurrency, settings.sandbox) == (1, SandboxSettings(processes=1, memory_mb=256))


def test_a_bad_url_setting_is_refused_at_open() -> None:
    with pytest.raises(ExecutorError, match="'inline://\\?bogus=1': unknown setting 'bogus'"):
        transport.open_executor("inline://?bogus=1", ExecutorOptions())


async def test_it_has_no_worker_server_and_no_workers_to_list() -> None:
    async with ScriptWorker(WorkerSettings(concurrency=1)) as worker:
        with pytest.raises(ExecutorError, match="the inline executor has no worker server"):
            await transport.serve_worker(worker, asyncio.Event())
    assert await transport.list_workers("inline", ExecutorOptions()) is None  # the core lists no workers for it


async def test_a_worker_that_cannot_start_fails_the_step_with_kind_worker() -> None:
    sandbox = SandboxSettings(processes=1, startup_timeout_s=0.001)
    async with InlineExecutor(WorkerSettings(concurrency=1, sandbox=sandbox)) as executor:
        result = await executor.call(make_request(DOUBLE, inputs={"x": 1}))
    assert result.error is not None
    assert (result.error.kind, result.error.type) == (ErrorKind.WORKER, "ExecutorError")
    assert "could not be started" in result.error.message


@pytest.mark.parametrize("is_used", [True, False], ids=["used", "unused"])
async def test_a_closed_executor_refuses_calls_and_closes_twice(is_used: bool) -> None:
    executor = transport.open_executor("inline://?processes=1", ExecutorOptions())
    if is_used:
        assert (await executor.call(make_request(DOUBLE, inputs={"x": 1}))).outputs == {"v": 2}
    await executor.aclose()
    await executor.aclose()
    with pytest.raises(RuntimeError, match="InlineExecutor is closed"):
        await executor.call(make_request(DOUBLE, inputs={"x": 1}))
