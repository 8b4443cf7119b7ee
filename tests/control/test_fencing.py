"""A driver paused between deciding a step's result and writing it, past its lease, while another
orchestrator takes the run over: when it wakes, before its own deadline timer has fired, the store refuses
its writes (fencing), and it stops as handed back. Each orchestrator has its own store client."""

from __future__ import annotations

import asyncio

import pytest

from dagrun import Orchestrator, RunHandedBack, RunStatus, parse_flow
from dagrun.contract.context import ContextOp, ContextOpKind
from dagrun.contract.dispatch import Dispatch
from dagrun.contract.executor import StepRequest, StepResult
from tests.store.conftest import (
    StoreFactory,
    clients,  # noqa: F401  (the fixture: separate clients of one store)
)

FLOW = parse_flow({"name": "one", "steps": [{"id": "s", "script": "pass", "outputs": ["by"]}]})


class DecidingExecutor:
    """Returns `by` and a context increment; `hold` keeps the result from the driver until released, like
    a process stopped (SIGSTOP) between the result coming in and its write."""

    def __init__(self, by: str, *, hold: bool) -> None:
        self.by = by
        self.decided = asyncio.Event()
        self.released = asyncio.Event()
        if not hold:
            self.released.set()

    async def call(self, request: StepRequest, dispatch: Dispatch | None = None) -> StepResult:
        self.decided.set()
        await self.released.wait()
        return StepResult(True, {"by": self.by}, (ContextOp(ContextOpKind.INCR, "n", 1),))

    async def aclose(self) -> None:
        pass


async def test_a_driver_paused_past_its_lease_writes_nothing_when_it_wakes(
    clients: StoreFactory,  # noqa: F811  (the imported fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old_store, new_store = clients(), clients()
    held = DecidingExecutor("old", hold=True)
    async with (
        Orchestrator(old_store, executors={"local": held}, lease_s=0.5) as old,
        Orchestrator(new_store, executors={"local": DecidingExecutor("new", hold=False)}) as new,
    ):
        # paused: the old orchestrator neither renews its lease nor notices that it lapsed
        monkeypatch.setattr(old._watcher, "_renew", asyncio.Event().wait)
        monkeypatch.setattr(old._watcher, "_lapse", lambda run_id: None)
        old_run = asyncio.ensure_future(old.run(FLOW))
        await asyncio.wait_for(held.decided.wait(), 10)
        (run,) = await new_store.list_runs()

        result = await asyncio.wait_for(new.drive(run.run_id, wait_for_lease=True), 10)
        held.released.set()  # the old driver wakes up with its result and writes it
        with pytest.raises(RunHandedBack):
            await asyncio.wait_for(old_run, 10)

    assert result is not None and result.status == RunStatus.SUCCEEDED
    assert (await new_store.get_run(run.run_id)).status == RunStatus.SUCCEEDED
    assert [(step.outputs, step.attempt) for step in await new_store.get_steps(run.run_id)] == [({"by": "new"}, 2)]
    assert await new_store.get_context(run.run_id) == {"n": 1}
    events = await new_store.get_events(run.run_id)
    assert [(e.step_id, e.attempt) for e in events if e.kind == "step" and e.status == "succeeded"] == [("s", 2)]
    assert [e.status for e in events if e.kind == "run"] == ["running", "succeeded"]
