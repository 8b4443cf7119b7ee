"""Helpers for tests that control runs: wait, through the store's events, until a run gets somewhere;
start `dagrun` commands as child processes on a store, also where the store cannot be written."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dagrun.contract.states import RunStatus
from dagrun.engine.control import RunControl
from dagrun.engine.orchestrator import Orchestrator
from dagrun.flow.model import Flow
from dagrun.flow.parser import parse_flow
from dagrun.store.base import Event, RunRecord, Store
from tests.conftest import require_program

WAIT_S = 30.0
_READ_ONLY_BIND = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'


async def wait_for_event(store: Store, run_id: str, wanted: str, step_id: str | None = None) -> Event:
    """The first event of the run (since its start) entering status `wanted` (for `step_id`, or the run)."""
    async with asyncio.timeout(WAIT_S):
        async for event in RunControl(store).follow_events(run_id):
            if event.status == wanted and event.step_id == step_id:
                return event
    raise AssertionError(f"run {run_id} ended without {step_id or 'the run'} becoming {wanted}")


async def first_run_id(store: Store) -> str:
    """The id of the first run recorded in `store` (by another process), once it is there: woken by the
    store's notices (the run's creation adds one), not by polling."""
    cursor = 0
    async with asyncio.timeout(WAIT_S):
        while not (runs := await store.list_runs(limit=1)):
            notices = await store.wait_notices(after=cursor, timeout_s=1)
            cursor = notices[-1].cursor if notices else cursor
    return runs[0].run_id


async def wait_until_waiting(orchestrator: Orchestrator, run_id: str, step_id: str) -> Event:
    return await wait_for_event(orchestrator.store, run_id, "waiting", step_id)


class Holds:
    """The host function `hold(n)`, for steps that hold their sandbox process: returns n once released,
    and counts the runs of each step."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.ran: Counter[int] = Counter()

    async def hold(self, n: int) -> int:
        self.ran[n] += 1
        await self.released.wait()
        return n


def held_flow(count: int, *, executor: str = "local") -> Flow:
    """`count` independent steps `s0`, `s1`...: step n outputs {"n": n} once `Holds` releases it."""
    steps = [{"id": f"s{n}", "script": f"outputs['n'] = hold({n})"} for n in range(count)]
    return parse_flow({"name": "held", "defaults": {"executor": executor}, "steps": steps})


async def assert_each_held_step_ran_once(store: Store, run: RunRecord, holds: Holds, count: int) -> None:
    """The run of `held_flow(count)` succeeded, each step in its first attempt, run once, with its output."""
    assert run.status == RunStatus.SUCCEEDED
    records = await store.get_steps(run.run_id)
    assert {record.step_id: (record.outputs, record.attempt) for record in records} == {
        f"s{n}": ({"n": n}, 1) for n in range(count)
    }
    assert holds.ran == Counter(range(count))


def read_only_mount(directory: Path) -> list[str]:
    """A command prefix: run the rest in a mount namespace of its own, where `directory` is a read-only
    bind mount, which nobody can write, root included (the tests run as root, whom file modes do not stop)."""
    require_program("unshare")
    return ["unshare", "--mount", "sh", "-c", _READ_ONLY_BIND, str(directory)]


class Processes:
    """`dagrun` child processes of one test, all killed when it ends."""

    def __init__(self, store_url: str, directory: Path) -> None:
        self.env = {**os.environ, "DAGRUN_STORE": store_url}
        self.env.pop("DAGRUN_DEBUG", None)
        self.directory = directory
        self.started: list[subprocess.Popen[str]] = []

    def run(self, *args: str, timeout: float = 60, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        """`dagrun ARGS`, run to its end; `prefix` (such as `read_only_mount`) goes before the command."""
        return subprocess.run(
            [*prefix, sys.executable, "-m", "dagrun", *args], cwd=self.directory, env=self.env,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def start(self, *args: str, prefix: Sequence[str] = ()) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "dagrun", *args], cwd=self.directory, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.started.append(process)
        return process

    def flow(self, document: dict[str, Any], name: str = "flow.json") -> str:
        path = self.directory / name
        path.write_text(json.dumps(document))
        return str(path)

    def submit(self, document: dict[str, Any]) -> str:
        result = self.run("submit", self.flow(document))
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.communicate()
