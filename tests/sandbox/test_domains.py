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
    """The big run never ends on its own: each of its steps that ends submits another until the small run
    has ended. Without slices the small run would wait forever; with them it waits about one slice. (A big
    run of a fixed number of steps made the test depend on how many steps this machine runs in a slice.)"""
    pool = await pools(ONE_AT_A_TIME)
    small_ended = asyncio.Event()
    big: list[asyncio.Future[StepResult]] = []

    async def big_step(n: int) -> StepResult:
        result = await pool.run(make_step(BUSY, run_id="big", step_id=f"s{n}"))
        if not small_ended.is_set():
            big.append(asyncio.ensure_future(big_step(len(big))))
        return result

    big.extend(asyncio.ensure_future(big_step(n)) for n in range(50))
    await asyncio.wait(big, return_when=asyncio.FIRST_COMPLETED)  # the big run has the only process
    try:
        small = await asyncio.wait_for(pool.run(make_step(BUSY, run_id="small", step_id="s0")), 10)
    except BaseException:
        for future in big:
            future.cancel()
        raise
    finally:
        small_ended.set()
    while not all(future.done() for future in big):
        await asyncio.gather(*big)

    assert small.ok and all(future.result().ok for future in big)
    assert len({future.result().worker_id for future in big}) >= 2  # the big run got a fresh process back after


async def test_a_run_alone_keeps_its_process(pools: PoolFactory) -> None:
    pool = await pools(ONE_AT_A_TIME)
    results = [await pool.run(make_step(BUSY, run_id="alone", step_id=f"s{n}")) for n in range(5)]
    await asyncio.sleep(SLICE_S * 2)
    results += await asyncio.gather(*(pool.run(make_step(BUSY, run_id="alone", step_id=f"t{n}")) for n in range(50)))
    assert len({result.worker_id for result in results}) == 1
