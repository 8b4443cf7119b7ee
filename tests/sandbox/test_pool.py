"""SandboxPool: scheduling across children, timeouts, dead children, cancellation, host functions, and
the confinement of every child (environment, fds, rlimits, uid)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.contract.executor import ErrorKind, StepRequest
from dagrun.errors import ExecutorError
from dagrun.sandbox import SandboxPool, SandboxSettings
from tests.sandbox.conftest import TEST_SETTINGS, PoolFactory

Step = Callable[..., StepRequest]
ONE_CHILD = dataclasses.replace(TEST_SETTINGS, processes=1)


def pid_of(worker_id: str) -> int:
    return int(worker_id.removeprefix("local:"))


class Gate:
    """Host functions that let a test know a script is running, and hold it there until released."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def mark_started(self) -> None:
        self.started.set()

    async def wait_release(self) -> str:
        self.started.set()
        await self.release.wait()
        return "released"

    def functions(self) -> dict[str, Any]:
        return {"mark_started": self.mark_started, "wait_release": self.wait_release}


async def test_steps_are_spread_across_children(pools: PoolFactory, step: Step) -> None:
    pool = await pools()
    script = "x = 0\nfor i in range(20000):\n    x = x + i\noutputs['x'] = x"

    results = await asyncio.gather(*(pool.run(step(script, step_id=f"s{n}")) for n in range(24)))

    assert all(result.ok for result in results)
    assert {result.outputs["x"] for result in results} == {sum(range(20000))}
    assert len({result.worker_id for result in results}) == 2
    assert {result.worker_id for result in results} == set(pool.worker_ids)


async def test_a_timeout_kills_the_child_and_the_steps_queued_behind_it_still_run(
    pools: PoolFactory, step: Step
) -> None:
    pool = await pools(ONE_CHILD)

    results = await asyncio.gather(
        pool.run(step("while True:\n    pass", timeout_s=0.5)),
        *(pool.run(step(f"outputs['n'] = {n}", step_id=f"s{n}")) for n in range(6)),
    )

    hung, *rest = results
    assert hung.error is not None
    assert (hung.error.kind, hung.error.message) == (ErrorKind.TIMEOUT, "step exceeded its 0.5 s timeout")
    assert 400 < hung.elapsed_ms < 5000
    assert [result.outputs for result in rest] == [{"n": n} for n in range(6)]
    assert all(result.worker_id != hung.worker_id for result in rest)
    assert not os.path.exists(f"/proc/{pid_of(hung.worker_id)}")


async def test_a_child_killed_from_outside_fails_only_its_running_step(pools: PoolFactory, step: Step) -> None:
    gate = Gate()
    pool = await pools(ONE_CHILD, functions=gate.functions())
    running = asyncio.ensure_future(pool.run(step("wait_release()", timeout_s=30)))
    await gate.started.wait()
    queued = [asyncio.ensure_future(pool.run(step(f"outputs['n'] = {n}"))) for n in range(3)]
    await asyncio.sleep(0)
    (worker_id,) = pool.worker_ids

    os.killpg(pid_of(worker_id), signal.SIGKILL)

    result = await running
    assert result.error is not None
    assert result.error.kind == ErrorKind.WORKER
    assert result.worker_id == worker_id
    assert [(await task).outputs for task in queued] == [{"n": n} for n in range(3)]
    again = await pool.run(step("outputs['ok'] = True"))
    assert again.ok and again.worker_id != worker_id


async def test_cancelling_a_running_step_kills_its_child(pools: PoolFactory, step: Step) -> None:
    gate = Gate()
    pool = await pools(ONE_CHILD, functions=gate.functions())
    task = asyncio.ensure_future(pool.run(step("mark_started()\nwhile True:\n    pass", timeout_s=30)))
    await gate.started.wait()
    (worker_id,) = pool.worker_ids

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    result = await pool.run(step("outputs['ok'] = True"))
    assert result.ok and result.worker_id != worker_id
    assert not os.path.exists(f"/proc/{pid_of(worker_id)}")


async def test_cancelling_a_queued_step_removes_it(pools: PoolFactory, step: Step) -> None:
    gate = Gate()
    settings = dataclasses.replace(ONE_CHILD, pipeline_depth=1)
    pool = await pools(settings, functions=gate.functions())
    running = asyncio.ensure_future(pool.run(step("outputs['v'] = wait_release()")))
    await gate.started.wait()
    queued = asyncio.ensure_future(pool.run(step("context.set('ran', True)")))
    await asyncio.sleep(0)

    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    gate.release.set()

    result = await running
    assert result.ok and result.outputs == {"v": "released"}
    assert pool.worker_ids == [result.worker_id]


async def test_a_step_cancelled_while_queued_on_a_child_is_stopped_when_it_would_start(
    pools: PoolFactory, step: Step
) -> None:
    gate = Gate()
    pool = await pools(dataclasses.replace(ONE_CHILD, pipeline_depth=2), functions=gate.functions())
    running = asyncio.ensure_future(pool.run(step("outputs['v'] = wait_release()", timeout_s=30)))
    await gate.started.wait()
    behind = asyncio.ensure_future(pool.run(step("while True:\n    pass", timeout_s=30)))  # handed to the child
    await asyncio.sleep(0)
    (worker_id,) = pool.worker_ids

    behind.cancel()
    with pytest.raises(asyncio.CancelledError):
        await behind
    gate.release.set()

    assert (await running).outputs == {"v": "released"}
    # the child would now spin until the cancelled step's timeout; it is replaced instead
    after = await asyncio.wait_for(pool.run(step("outputs['ok'] = True")), 10)
    assert after.ok and after.worker_id != worker_id


async def test_host_functions_sync_and_async(pools: PoolFactory, step: Step) -> None:
    async def lookup(key: str) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"key": key, "found": True}

    def add(a: int, b: int = 0) -> int:
        return a + b

    pool = await pools(functions={"lookup": lookup, "add": add})

    result = await pool.run(step("outputs['sum'] = add(2, b=3)\noutputs['row'] = lookup('eu')"))

    assert result.ok, result.error
    assert result.outputs == {"sum": 5, "row": {"key": "eu", "found": True}}


async def test_a_host_function_exception_becomes_a_script_error(pools: PoolFactory, step: Step) -> None:
    def explode() -> None:
        raise ValueError("the database is down")

    pool = await pools(functions={"explode": explode})

    uncaught = await pool.run(step("x = 1\nexplode()"))
    caught = await pool.run(step("try:\n    explode()\nexcept Exception as e:\n    outputs['e'] = str(e)"))

    assert uncaught.error is not None
    assert (uncaught.error.kind, uncaught.error.type, uncaught.error.line) == (
        ErrorKind.SCRIPT,
        "HostFunctionError",
        2,
    )
    assert "ValueError: the database is down" in uncaught.error.message
    assert "Traceback" not in uncaught.error.message
    assert caught.ok and "the database is down" in caught.outputs["e"]


async def test_host_functions_take_and_return_json_values_only(pools: PoolFactory, step: Step) -> None:
    def numbers() -> set[int]:
        return {1, 2}

    def echo(value: Any) -> Any:
        return value

    pool = await pools(functions={"numbers": numbers, "echo": echo})

    bad_return = await pool.run(step("numbers()"))
    bad_argument = await pool.run(step("echo({1, 2})"))

    assert bad_return.error is not None and bad_argument.error is not None
    assert bad_return.error.kind == ErrorKind.SCRIPT
    assert "not JSON" in bad_return.error.message
    assert bad_argument.error.kind == ErrorKind.SCRIPT
    assert "JSON values" in bad_argument.error.message


def test_host_function_names_must_be_public_and_free() -> None:
    for name in ("_private", "not an identifier", "inputs", "print", "json", "len", "type"):
        with pytest.raises(ValueError, match="host function name"):
            SandboxPool(TEST_SETTINGS, functions={name: print})


async def test_context_operations_are_recorded_and_reads_see_them(pools: PoolFactory, step: Step) -> None:
    pool = await pools()
    script = (
        "context.set('region', 'eu')\n"
        "outputs['n'] = context.incr('count', 2)\n"
        "context.append('seen', step_id)\n"
        "outputs['region'] = context.get('region')\n"
        "outputs['missing'] = context.get('missing', 'default')\n"
    )

    result = await pool.run(step(script, step_id="load", context={"count": 1}))

    assert result.ok, result.error
    assert result.outputs == {"n": 3, "region": "eu", "missing": "default"}
    assert result.context_ops == (
        ContextOp(ContextOpKind.SET, "region", "eu"),
        ContextOp(ContextOpKind.INCR, "count", 2),
        ContextOp(ContextOpKind.APPEND, "seen", "load"),
    )


async def test_a_failed_step_leaves_no_context_operations(pools: PoolFactory, step: Step) -> None:
    pool = await pools()

    result = await pool.run(step("context.set('a', 1)\nfail('stop')"))

    assert result.error is not None and result.error.kind == ErrorKind.FAIL
    assert result.context_ops == ()


async def test_scripts_see_their_ids_and_attempt(pools: PoolFactory, step: Step) -> None:
    pool = await pools()
    script = "outputs['ids'] = [attempt, step_id, run_id, context_id, inputs['region']]"

    result = await pool.run(
        step(script, run_id="r-9", step_id="extract", attempt=3, context_id="eu-workers", inputs={"region": "eu"})
    )

    assert result.ok, result.error
    assert result.outputs == {"ids": [3, "extract", "r-9", "eu-workers", "eu"]}
    assert result.worker_id.startswith("local:")


async def test_inputs_that_are_not_json_fail_the_step_without_raising(pools: PoolFactory, step: Step) -> None:
    pool = await pools()

    result = await pool.run(step("outputs['x'] = 1", inputs={"s": {1, 2}}))

    assert result.error is not None and result.error.kind == ErrorKind.INPUT


async def test_children_start_clean(pools: PoolFactory) -> None:
    pool = await pools()

    for worker_id in pool.worker_ids:
        pid = pid_of(worker_id)
        with open(f"/proc/{pid}/environ", "rb") as environ:
            assert environ.read() == b""
        assert sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"]
        assert os.getpgid(pid) == pid != os.getpgid(0)  # its own process group (and session)
        assert os.readlink(f"/proc/{pid}/cwd") == "/"


async def test_children_are_confined_by_rlimits(pools: PoolFactory) -> None:
    pool = await pools()

    for worker_id in pool.worker_ids:
        with open(f"/proc/{pid_of(worker_id)}/limits") as file:
            limits = {line[:26].strip(): line[26:].split()[:2] for line in file.readlines()[1:]}
        assert limits["Max address space"] == [str(256 * 1024 * 1024)] * 2
        assert limits["Max file size"] == ["0", "0"]
        assert limits["Max core file size"] == ["0", "0"]
        assert limits["Max open files"] == ["3", "3"]
        assert limits["Max processes"] == ["0", "0"]
        assert limits["Max cpu time"][0] != "unlimited"  # re-armed before every step


@pytest.mark.skipif(os.geteuid() != 0, reason="privileges are dropped only when started as root")
async def test_children_started_as_root_run_as_nobody(pools: PoolFactory) -> None:
    pool = await pools()

    for worker_id in pool.worker_ids:
        with open(f"/proc/{pid_of(worker_id)}/status") as file:
            status = dict(line.split(":", 1) for line in file)
        assert status["Uid"].split() == ["65534"] * 4
        assert status["Gid"].split() == ["65534"] * 4
        assert status["Groups"].split() == []


async def test_aclose_is_idempotent_and_run_after_it_raises(step: Step) -> None:
    pool = SandboxPool(TEST_SETTINGS)
    await pool.start()
    pids = [pid_of(worker_id) for worker_id in pool.worker_ids]

    await pool.aclose()
    await pool.aclose()

    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)
    with pytest.raises(RuntimeError, match="SandboxPool is closed"):
        await pool.run(step("outputs['x'] = 1"))


async def test_the_pool_is_an_async_context_manager(step: Step) -> None:
    async with SandboxPool(TEST_SETTINGS) as pool:
        result = await pool.run(step("outputs['x'] = 1"))

    assert result.ok
    with pytest.raises(RuntimeError, match="SandboxPool is closed"):
        await pool.run(step("outputs['x'] = 1"))


async def test_closing_fails_the_steps_still_waiting(step: Step) -> None:
    gate = Gate()
    pool = SandboxPool(ONE_CHILD, functions=gate.functions())
    await pool.start()
    running = asyncio.ensure_future(pool.run(step("wait_release()")))
    await gate.started.wait()

    await pool.aclose()

    with pytest.raises(RuntimeError, match="SandboxPool is closed"):
        await running


async def test_a_pool_whose_children_cannot_start_fails_steps_instead_of_hanging(step: Step) -> None:
    pool = SandboxPool(dataclasses.replace(ONE_CHILD, startup_timeout_s=0.001))
    try:
        with pytest.raises(ExecutorError, match="could not be started"):
            await pool.start()
        result = await pool.run(step("outputs['x'] = 1"))
    finally:
        await pool.aclose()

    assert result.error is not None and result.error.kind == ErrorKind.WORKER


async def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="processes"):
        SandboxSettings(processes=0)
    with pytest.raises(ValueError, match="pipeline_depth"):
        SandboxSettings(pipeline_depth=0)


async def test_switching_uid_needs_root_and_a_child_that_cannot_switch_never_serves() -> None:
    if os.geteuid() != 0:
        with pytest.raises(ValueError, match="need a parent running as root"):
            SandboxPool(dataclasses.replace(TEST_SETTINGS, drop_to_uid=os.geteuid() + 1))
        return
    pool = SandboxPool(dataclasses.replace(ONE_CHILD, drop_to_uid=2**40))
    try:
        with pytest.raises(ExecutorError, match=r"failed to start.*OverflowError"):
            await pool.start()
    finally:
        await pool.aclose()


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, float("nan"), float("inf")])
async def test_a_timeout_that_is_not_a_positive_number_fails_the_step(
    pools: PoolFactory, step: Step, timeout_s: float
) -> None:
    pool = await pools(ONE_CHILD)

    result = await pool.run(step("outputs['x'] = 1", timeout_s=timeout_s))

    assert result.error is not None and result.error.kind == ErrorKind.INPUT


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                children.append(int(entry))
    return children


@pytest.mark.parametrize("cancel_start_first", [False, True])
@pytest.mark.parametrize("delay_s", [0.0, 0.02, 0.2])
async def test_closing_a_pool_while_it_starts_leaves_no_process_behind(
    delay_s: float, cancel_start_first: bool
) -> None:
    before = set(_children_of(os.getpid()))
    pool = SandboxPool(dataclasses.replace(TEST_SETTINGS, processes=2))
    starting = asyncio.ensure_future(pool.start())
    await asyncio.sleep(delay_s)
    if cancel_start_first:  # the spawns are cancelled twice: by the start, then by aclose
        starting.cancel()
    await pool.aclose()
    await asyncio.gather(starting, return_exceptions=True)
    assert set(_children_of(os.getpid())) - before == set()
