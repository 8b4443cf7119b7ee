"""Helpers for tests that control runs: wait, through the store's events, until a run gets somewhere."""

from __future__ import annotations

import asyncio

from dagrun.control import RunControl
from dagrun.orchestrator import Orchestrator
from dagrun.store.base import Event, Store

WAIT_S = 30.0


async def wait_for_event(store: Store, run_id: str, wanted: str, step_id: str | None = None) -> Event:
    """The first event of the run (since its start) entering status `wanted` (for `step_id`, or the run)."""
    async with asyncio.timeout(WAIT_S):
        async for event in RunControl(store).follow_events(run_id):
            if event.status == wanted and event.step_id == step_id:
                return event
    raise AssertionError(f"run {run_id} ended without {step_id or 'the run'} becoming {wanted}")


async def wait_until_waiting(orchestrator: Orchestrator, run_id: str, step_id: str) -> Event:
    return await wait_for_event(orchestrator.store, run_id, "waiting", step_id)
