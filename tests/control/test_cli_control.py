"""The control plane as operators use it: `dagrun orchestrator`, `submit`, `wait`, `signal`, `pause`,
`resume`, `cancel`, ... as real processes, with kill -9 of the process driving a run."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dagrun.contract.states import RunStatus
from dagrun.store import Store, open_store
from tests.control_support import Processes, first_run_id, read_only_mount, wait_for_event

pytestmark = pytest.mark.slow

LEASE_S = "2"  # a dead driver's runs are taken over after this


def chain_document(steps: int = 6, work: int = 300_000) -> dict[str, Any]:
    """s1 -> s2 -> ... each spinning a little, then passing a counter on."""
    document: dict[str, Any] = {"name": "chain", "steps": []}
    for i in range(1, steps + 1):
        step: dict[str, Any] = {
            "id": f"s{i}",
            "script": "n = 0\nfor _ in range(inputs['work']):\n    n += 1\noutputs['v'] = inputs['prev'] + 1",
            "inputs": {"work": work, "prev": f"${{steps.s{i - 1}.v}}" if i > 1 else 0},
            "outputs": ["v"],
        }
        if i > 1:
            step["depends_on"] = [f"s{i - 1}"]
        document["steps"].append(step)
    return document


GATED = {
    "name": "gated",
    "steps": [
        {"id": "build", "script": "outputs['version'] = '1.0'\ncontext.incr('builds')"},
        {"id": "approve", "depends_on": ["build"], "wait_for": {"fields": ["approved"]}},
        {"id": "ship", "depends_on": ["approve"], "script": "outputs['shipped'] = inputs['ok']",
         "inputs": {"ok": "${steps.approve.approved}"}},
    ],
}  # fmt: skip


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return str(tmp_path / "store")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as opened:
        yield opened


@pytest.fixture
def dagrun(store_url: str, tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(store_url, tmp_path)
    try:
        yield processes
    finally:
        processes.kill_all()


async def step_events(store: Store, run_id: str) -> Counter[tuple[str, str, int]]:
    """How many times each (step, status, attempt) was recorded."""
    return Counter((e.step_id or "", e.status, e.attempt) for e in await store.get_events(run_id) if e.step_id)


def test_an_orchestrator_says_it_started_at_info_under_its_own_logger_and_stops_on_sigterm(
    dagrun: Processes, store_url: str
) -> None:
    orchestrator = dagrun.start("orchestrator", "--processes", "1")
    assert orchestrator.stderr is not None
    before = []
    while "serving the runs" not in (line := orchestrator.stderr.readline()):  # the test's timeout bounds it
        assert line, "the orchestrator ended without its start-up line"
        before.append(line)
    started = re.search(r" (\w+) ([\w.]+): orchestrator \S+ serving the runs of (.+) \(lease 15 s\)$", line)
    assert started is not None, line
    assert started.groups() == ("INFO", "dagrun.engine.orchestrator", store_url)
    assert not [earlier for earlier in before if " WARNING " in earlier or " ERROR " in earlier], before
    orchestrator.send_signal(signal.SIGTERM)
    assert orchestrator.wait(timeout=60) == 0


def test_a_second_signal_with_other_values_exits_2_naming_the_first_and_a_repeat_exits_0(dagrun: Processes) -> None:
    run_id = dagrun.submit(GATED)  # nobody drives it: the step waits for its signal all along
    first = dagrun.run("signal", run_id, "approve", "approved=true")
    assert first.returncode == 0, first.stderr
    assert "(command 1)" in first.stdout

    other = dagrun.run("signal", run_id, "approve", "approved=false")

    assert other.returncode == 2
    assert other.stdout == "" and len(other.stderr.splitlines()) == 1, other.stderr
    assert other.stderr.startswith(f"dagrun: run {run_id!r}: step 'approve' already has a signal, and the first")
    assert "command 1, sent " in other.stderr and 'with {"approved":true}' in other.stderr
    again = dagrun.run("signal", run_id, "approve", "approved=true")
    assert again.returncode == 0, again.stderr
    assert "(command 1)" in again.stdout
    checkpoint = json.loads(dagrun.run("checkpoint", run_id).stdout)
    assert [(c["kind"], c["values"]) for c in checkpoint["commands"]] == [("signal", {"approved": True})]


async def test_a_run_whose_process_was_killed_is_resumed_without_rerunning_completed_steps(
    dagrun: Processes, store: Store
) -> None:
    runner = dagrun.start("run", dagrun.flow(chain_document()), "--lease-s", LEASE_S, "--processes", "1")
    run_id = await first_run_id(store)  # the run is recorded before its first step starts
    await wait_for_event(store, run_id, "succeeded", "s3")
    runner.send_signal(signal.SIGKILL)
    runner.communicate()
    before = {step.step_id: step for step in await store.get_steps(run_id)}
    done_before = {step_id for step_id, step in before.items() if step.status == "succeeded"}
    assert {"s1", "s2", "s3"} <= done_before and len(done_before) < 6

    result = dagrun.run("resume", run_id, "--lease-s", LEASE_S, "--processes", "1")

    assert result.returncode == 0, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    after = {step.step_id: step for step in await store.get_steps(run_id)}
    assert {step_id: step.outputs for step_id, step in after.items()} == {f"s{i}": {"v": i} for i in range(1, 7)}
    assert (await store.get_run(run_id)).status == RunStatus.SUCCEEDED
    events = await step_events(store, run_id)
    for step_id in done_before:  # completed steps were not run again
        assert after[step_id] == before[step_id]
        assert events[(step_id, "running", 2)] == 0
    interrupted = [step_id for step_id, step in before.items() if step.status == "running"]
    for step_id in interrupted:  # the step cut off ran again, as a new attempt
        assert after[step_id].attempt == 2
    assert all(count == 1 for (_, status, _), count in events.items() if status == "succeeded")


async def test_orchestrator_services_share_the_runs_and_take_over_from_a_dead_one(
    dagrun: Processes, store: Store
) -> None:
    first = dagrun.start("orchestrator", "--lease-s", LEASE_S, "--processes", "1")
    second = dagrun.start("orchestrator", "--lease-s", LEASE_S, "--processes", "1")
    quick = {"name": "quick", "steps": [{"id": f"q{i}", "script": f"outputs['v'] = {i}"} for i in range(5)]}
    run_ids = [dagrun.submit(quick) for _ in range(4)]
    for run_id in run_ids:
        result = dagrun.run("wait", run_id, "--timeout", "60")
        assert result.returncode == 0, result.stdout + result.stderr
        events = await step_events(store, run_id)
        assert all(count == 1 for count in events.values()), events  # one driver per run, each step once

    slow = dagrun.submit(chain_document(steps=8))
    await wait_for_event(store, slow, "succeeded", "s2")
    driver = await store.get_lease(slow)
    assert driver is not None
    # kill -9 whichever service drives it: the other takes the run over once the lease lapses
    for process in (first, second):
        if f":{process.pid}:" in driver.owner:
            process.send_signal(signal.SIGKILL)
    result = dagrun.run("wait", slow, "--timeout", "90", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = {step.step_id: step.outputs for step in await store.get_steps(slow)}
    assert outputs == {f"s{i}": {"v": i} for i in range(1, 9)}


async def test_operators_control_a_submitted_run_from_the_command_line(dagrun: Processes, store: Store) -> None:
    dagrun.start("orchestrator", "--processes", "1")
    run_id = dagrun.submit(GATED)
    await wait_for_event(store, run_id, "waiting", "approve")

    pending = dagrun.run("pending", run_id, "--json")
    assert [(p["step_id"], p["waiting_for"]) for p in json.loads(pending.stdout)] == [
        ("approve", ["approved"]),
        ("ship", []),
    ]
    paused = dagrun.run("pause", run_id[:-3])  # a prefix of its id, or `last`, names it too
    assert paused.returncode == 0 and paused.stdout.startswith(f"run {run_id}: pause sent"), paused.stderr
    await wait_for_event(store, run_id, "paused")
    refused = dagrun.run("signal", run_id, "build", "approved=true")
    assert refused.returncode == 2 and "runs a script" in refused.stderr
    signalled = dagrun.run("signal", "last", "approve", "approved=true")
    assert signalled.returncode == 0, signalled.stderr
    await wait_for_event(store, run_id, "succeeded", "approve")
    assert dagrun.run("wait", run_id, "--timeout", "0.5").returncode == 124  # paused: ship does not start
    assert dagrun.run("resume", run_id).returncode == 0
    assert dagrun.run("wait", run_id, "--timeout", "60").returncode == 0

    status = json.loads(dagrun.run("status", run_id, "--json").stdout)
    assert status["status"] == "succeeded"
    assert status["context"] == {"builds": 1}
    assert status["steps"]["ship"]["outputs"] == {"shipped": True}
    metrics = json.loads(dagrun.run("metrics", run_id, "--json").stdout)
    assert metrics["steps_by_status"] == {"succeeded": 3}
    checkpoint = json.loads(dagrun.run("checkpoint", run_id).stdout)
    assert [c["kind"] for c in checkpoint["commands"]] == ["pause", "signal", "resume"]
    assert json.loads(dagrun.run("errors", run_id, "--json").stdout) == []
    ended = dagrun.run("cancel", run_id)
    assert ended.returncode == 2 and "already ended succeeded" in ended.stderr

    second = dagrun.submit(GATED)
    await wait_for_event(store, second, "waiting", "approve")
    assert dagrun.run("cancel", second).returncode == 0
    assert dagrun.run("wait", second, "--timeout", "60").returncode == 1
    assert (await store.get_run(second)).status == RunStatus.CANCELLED


def parallel_document(steps: int, work: int) -> dict[str, Any]:
    """`steps` independent steps, each spinning for `work` rounds, then writing the context."""
    script = "n = 0\nfor _ in range(inputs['work']):\n    n += 1\ncontext.incr('done')\noutputs['n'] = n"
    return {
        "name": "parallel",
        "steps": [{"id": f"p{i}", "script": script, "inputs": {"work": work}} for i in range(steps)],
    }


async def test_a_cancel_sent_while_a_run_is_taken_over_starts_no_further_attempt(
    dagrun: Processes, store: Store
) -> None:
    lease_s = "6"  # the cancel is sent while the dead driver's lease still holds: the log has it at takeover
    first = dagrun.start("orchestrator", "--lease-s", lease_s, "--processes", "4")
    run_id = dagrun.submit(parallel_document(steps=4, work=3_000_000))
    await wait_for_event(store, run_id, "running", "p3")
    first.send_signal(signal.SIGKILL)
    first.communicate()
    dagrun.start("orchestrator", "--lease-s", lease_s, "--processes", "4")
    await asyncio.sleep(1)
    cancelled = dagrun.run("cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert await store.get_lease(run_id) is not None, "the test is too slow: the takeover came before the cancel"

    result = dagrun.run("wait", run_id, "--timeout", "60")

    assert result.returncode == 1, result.stdout + result.stderr
    assert (await store.get_run(run_id)).status == RunStatus.CANCELLED
    events = await step_events(store, run_id)
    assert not [key for key in events if key[2] > 1], events  # no second attempt was started
    assert not [key for key in events if key[1] == "succeeded"], events
    assert await store.get_context(run_id) == {}


def test_quiet_waits_and_follows_outlast_a_short_redis_socket_timeout(redis_url: str, tmp_path: Path) -> None:
    processes = Processes(f"{redis_url}&socket_timeout=0.2", tmp_path)
    try:
        run_id = processes.submit(GATED)  # nobody drives it: no event comes
        follow = processes.start("events", run_id, "--follow")

        waited = processes.run("wait", run_id, "--timeout", "12")

        assert waited.returncode == 124, waited.stderr
        assert follow.poll() is None, follow.communicate()  # still following, not failed
    finally:
        processes.kill_all()


async def test_a_read_only_view_of_a_sqlite_store_follows_a_run_driven_elsewhere(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    processes = Processes(str(directory), tmp_path)
    try:
        async with open_store(str(directory)) as store:
            processes.start("orchestrator", "--processes", "1")
            run_id = processes.submit(GATED)
            await wait_for_event(store, run_id, "waiting", "approve")
            follower = processes.start("events", run_id, "--follow", prefix=read_only_mount(directory))
            assert follower.stdout is not None
            for line in follower.stdout:  # what was written before it started
                if "step approve waiting" in line:
                    break
            signalled = processes.run("signal", run_id, "approve", "approved=true")
            assert signalled.returncode == 0, signalled.stderr
            out, err = follower.communicate(timeout=60)  # and what was written since, to the run's end
        assert follower.returncode == 0, err
        assert "step ship succeeded" in out and "run succeeded" in out, out
    finally:
        processes.kill_all()


async def test_a_driver_stopped_past_its_lease_writes_nothing_once_another_took_the_run_over(
    dagrun: Processes, store: Store
) -> None:
    runner = dagrun.start("run", dagrun.flow(chain_document(steps=6)), "--lease-s", LEASE_S, "--processes", "1")
    run_id = await first_run_id(store)  # the run is recorded before its first step starts
    await wait_for_event(store, run_id, "succeeded", "s2")
    runner.send_signal(signal.SIGSTOP)  # paused mid-run, past its lease: its deadline timer cannot fire either
    try:
        taken_over = dagrun.run("resume", run_id, "--lease-s", LEASE_S, "--processes", "1", timeout=120)
        assert taken_over.returncode == 0, taken_over.stdout + taken_over.stderr
        after_takeover = await step_events(store, run_id)
    finally:
        runner.send_signal(signal.SIGCONT)  # it wakes with whatever it was about to write
    _out, err = runner.communicate(timeout=60)

    assert runner.returncode != 0 and "Traceback" not in err, err
    assert await step_events(store, run_id) == after_takeover  # the woken driver wrote nothing
    assert (await store.get_run(run_id)).status == RunStatus.SUCCEEDED
    outputs = {step.step_id: step.outputs for step in await store.get_steps(run_id)}
    assert outputs == {f"s{i}": {"v": i} for i in range(1, 7)}


async def test_ctrl_c_leaves_the_run_unfinished_and_says_how_to_resume_it(dagrun: Processes, store: Store) -> None:
    runner = dagrun.start("run", dagrun.flow(GATED))  # it waits for a signal until interrupted
    run_id = await first_run_id(store)  # the run is recorded before its first step starts
    await wait_for_event(store, run_id, "waiting", "approve")

    runner.send_signal(signal.SIGINT)
    _, err = runner.communicate(timeout=30)

    assert runner.returncode == 130, err
    assert err.endswith(
        f"interrupted: run {run_id} is left unfinished, with no driver; an orchestrator serving its store takes it "
        f"up, or continue it here with: dagrun resume {run_id}\n"
    ), err
    assert "Traceback" not in err
    assert (await store.get_run(run_id)).status == RunStatus.RUNNING  # not cancelled
    assert await store.get_lease(run_id) is None  # given up: nothing to wait for
    status = dagrun.run("status", run_id)
    assert "no driver: `dagrun resume` continues it" in status.stdout
    resumer = dagrun.start("resume", run_id)
    assert dagrun.run("signal", run_id, "approve", "approved=true").returncode == 0
    _, err = resumer.communicate(timeout=60)  # no lease to wait out: done as soon as it runs
    assert resumer.returncode == 0, err
    assert (await store.get_run(run_id)).status == RunStatus.SUCCEEDED
    assert (await step_events(store, run_id))[("build", "succeeded", 1)] == 1  # not run again


async def test_resume_of_a_run_a_live_orchestrator_drives_says_so_without_waiting_out_its_lease(
    dagrun: Processes, store: Store
) -> None:
    dagrun.start("orchestrator", "--lease-s", "60")
    run_id = dagrun.submit(GATED)
    await wait_for_event(store, run_id, "waiting", "approve")

    started = asyncio.get_running_loop().time()
    result = dagrun.run("resume", run_id, "--lease-s", "60")
    took_s = asyncio.get_running_loop().time() - started

    assert result.returncode == 0, result.stderr
    assert f"run {run_id}: resume sent; it is driven by orchestrator:" in " ".join(result.stdout.split())
    assert took_s < 20  # a third of the lease: it did not wait for the lease to lapse (60 s) nor be renewed (20 s)


def test_submit_warns_when_no_orchestrator_takes_the_run_up(dagrun: Processes) -> None:
    alone = dagrun.run("submit", dagrun.flow(GATED))
    run_id = alone.stdout.strip()
    assert alone.returncode == 0, alone.stderr
    assert "\n" not in run_id  # the id is all that stdout holds
    assert " ".join(alone.stderr.split()) == (
        f"dagrun: warning: no orchestrator took run {run_id} up within 1 s: nothing drives it until one serves "
        f"this store (dagrun orchestrator), or `dagrun resume {run_id}` drives it here"
    )

    orchestrator = dagrun.start("orchestrator")
    assert orchestrator.stderr is not None
    for line in orchestrator.stderr:  # it says so once it listens for submissions
        if "serving" in line:
            break
    served = dagrun.run("submit", dagrun.flow(GATED))
    assert served.returncode == 0 and served.stderr == "", served.stderr


async def test_a_map_whose_process_was_killed_mid_map_resumes_each_item_once(dagrun: Processes, store: Store) -> None:
    spin = "n = 0\nfor _ in range(200_000):\n    n += 1\noutputs['v'] = inputs['item'] * 2"
    document = {
        "name": "mapped",
        "inputs": {"items": list(range(12))},
        "steps": [
            {"id": "each", "script": spin, "map": {"over": "${flow.items}", "max_parallel": 2}, "outputs": ["v"]},
            {
                "id": "sum",
                "depends_on": ["each"],
                "script": "outputs['s'] = sum(inputs['v'])",
                "inputs": {"v": "${steps.each.v}"},
            },
        ],
    }
    runner = dagrun.start("run", dagrun.flow(document), "--lease-s", LEASE_S, "--processes", "2")
    run_id = await first_run_id(store)  # the run is recorded before its first step starts
    await wait_for_event(store, run_id, "succeeded", "each[3]")
    runner.send_signal(signal.SIGKILL)
    runner.communicate()
    done_before = {s.step_id for s in await store.get_steps(run_id) if s.status == "succeeded"}
    assert "each" not in done_before and "each[3]" in done_before

    result = dagrun.run("resume", run_id, "--lease-s", LEASE_S, "--processes", "2")

    assert result.returncode == 0, result.stderr + result.stdout
    steps = {step.step_id: step for step in await store.get_steps(run_id)}
    assert steps["each"].outputs == {"v": [i * 2 for i in range(12)]}
    assert steps["sum"].outputs == {"s": 132}
    events = await step_events(store, run_id)
    for i in range(12):  # each item succeeded once; one that ended before the kill did not run again
        assert events[(f"each[{i}]", "succeeded", steps[f"each[{i}]"].attempt)] == 1
        assert (
            sum(count for (step, status, _), count in events.items() if step == f"each[{i}]" and status == "succeeded")
            == 1
        )
    for step_id in done_before:
        assert steps[step_id].attempt == 1
