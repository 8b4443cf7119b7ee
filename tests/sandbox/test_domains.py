"""Runs sharing a pool's sandbox processes in time slices: a run waiting with no process of its own gets
one after at most a slice of another run's, not after that run's end; a run alone keeps its processes."""

from __future__ import annotations

import asyncio
import dataclasses

from dagrun.contract.executor import StepResult
from dagrun.sandbox.domains import SLICE_S
from tests.sandbox.conftest import TEST_SETTINGS, PoolFactory, make_step

ONE_AT_A_TIME = dataclasses.replace(TEST_SETTINGS, processes=1, pipeline_depth=1)
BUSY = "x = 0\nfor i in range(3000):\n    x = x + i\noutputs['x'] = x"  # about a millisecond


async def test_a_small_run_beside_a_big_one_waits_for_a_slice_not_for_its_end(pools: PoolFactory) -> None:
    pool = await pools(ONE_AT_A_TIME)
    ended: list[str] = []

    async def run(run_id: str, n: int) -> StepResult:
        result = await pool.run(make_step(BUSY, run_id=run_id, step_id=f"s{n}"))
        ended.append(run_id)
        return result

    big = [asyncio.ensure_future(run("big", n)) for n in range(600)]
    while not ended:  # the big run has the only process
        await asyncio.sleep(0.005)
    small = await asyncio.wait_for(run("small", 0), 10)
    results = await asyncio.gather(*big)

    assert small.ok and all(result.ok for result in results)
    big_before_small = ended.index("small")
    assert big_before_small < len(big) / 2, f"the small run waited for {big_before_small} of the big run's steps"
    assert len({result.worker_id for result in results}) >= 2  # the big run got a fresh process back after


async def test_a_run_alone_keeps_its_process(pools: PoolFactory) -> None:
    pool = await pools(ONE_AT_A_TIME)
    results = [await pool.run(make_step(BUSY, run_id="alone", step_id=f"s{n}")) for n in range(5)]
    await asyncio.sleep(SLICE_S * 2)
    results += await asyncio.gather(*(pool.run(make_step(BUSY, run_id="alone", step_id=f"t{n}")) for n in range(50)))
    assert len({result.worker_id for result in results}) == 1
